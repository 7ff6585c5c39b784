"""What a merge will write, decided from safetensors headers alone: the adapter must fit the base, and each
output tensor's name, dtype and shape is planned before any is computed."""

from __future__ import annotations

import dataclasses

from packager.errors import InputFileError, StageError
from packager.models.adapter import Adapter
from packager.models.checkpoint import Checkpoint
from packager.models.safetensors_stream import Layout, TensorSpec, read_layout


def read_base_layout(ckpt: Checkpoint) -> Layout:
    shards = [p for p in ckpt.weights if p.name.endswith(".safetensors")]
    if not shards:
        raise InputFileError(ckpt.path, "the base has no safetensors weights to merge into")
    return read_layout(shards)


# Wrappers a checkpoint and the loaded model may spell differently: transformers 5 loads Gemma 3's (and other
# multimodal models') Hub checkpoints, stored as `language_model.model.layers...`, into modules named
# `model.language_model.layers...` (its conversion_mapping.py renames keys at load and back at save), and PEFT
# names the adapter's tensors after the modules.
WRAPPERS = frozenset({"model", "language_model"})


def _unwrapped(key: str) -> str:
    return ".".join(part for part in key.split(".") if part not in WRAPPERS)


def on_checkpoint_keys(adapter: Adapter, layout: Layout) -> Adapter:
    """``adapter`` with every module and replacement keyed by the base checkpoint's own tensor name.

    A PEFT module path is the checkpoint's name when the checkpoint holds it; otherwise the one checkpoint tensor
    whose name is the same once the wrappers are left out of both. A name with no such tensor, or with several,
    stays as it is, and :func:`check_adapter_fits_base` names it.
    """
    unwrapped: dict[str, list[str]] = {}
    for name in layout.specs:
        unwrapped.setdefault(_unwrapped(name), []).append(name)

    def on_checkpoint(key: str) -> str:
        if key in layout.specs:
            return key
        found = unwrapped.get(_unwrapped(key), [])
        return found[0] if len(found) == 1 else key

    modules = {}
    for key, module in adapter.modules.items():
        name = on_checkpoint(key)
        modules[name] = dataclasses.replace(module, base_key=name)
    replacements = {on_checkpoint(key): tensor for key, tensor in adapter.replacements.items()}
    return dataclasses.replace(adapter, modules=modules, replacements=replacements)


def check_adapter_fits_base(adapter: Adapter, layout: Layout, *, base_name: str) -> None:
    """Refuse an adapter trained on another base: every module must exist with matching shapes."""
    trained_on = adapter.config.get("base_model_name_or_path") or "an unnamed base"
    mismatch = []
    for key, mod in adapter.modules.items():
        base = layout.specs.get(key) or (layout.specs.get(embedding_key(layout)) if key == "lm_head.weight" else None)
        if base is None:
            mismatch.append(f"{key} does not exist in the base")
            continue
        a, b = adapter.shape(mod.a_key), adapter.shape(mod.b_key)
        # GPT-2's Conv1D (and embeddings) store [in, out]; PEFT records that as fan_in_fan_out
        stored_transposed = mod.kind != "linear" or adapter.config.get("fan_in_fan_out")
        out_features, in_features = (base.shape[1], base.shape[0]) if stored_transposed else base.shape
        if a[1] != in_features or b[0] != out_features:
            mismatch.append(f"{key}: adapter A{list(a)} B{list(b)} vs base weight {list(base.shape)}")
    if mismatch:
        raise StageError("merge", f"the adapter at {adapter.path} (trained on {trained_on}) does not fit the base "
                                  f"{base_name}: " + "; ".join(mismatch[:3]) +
                         (f" (and {len(mismatch) - 3} more)" if len(mismatch) > 3 else ""),
                         hint="merge onto the base model the adapter was trained on")


def plan_output(adapter: Adapter, layout: Layout, *, dtype: str, tied: bool) -> tuple[list[TensorSpec], bool]:
    """Output tensors in the base's order (replacements may change shapes). Returns (specs, untie_lm_head)."""
    out_dtype = {"bfloat16": "BF16", "float16": "F16"}[dtype]
    specs = []
    for key, spec in layout.specs.items():
        shape = adapter.shape(adapter.replacements[key]) if key in adapter.replacements else spec.shape
        float_dtype = spec.dtype in ("F32", "F16", "BF16", "F64")
        specs.append(TensorSpec(key, out_dtype if float_dtype else spec.dtype, shape))
    # With tied embeddings the base stores no lm_head. PEFT trains an adapted embedding (LoRA or
    # modules_to_save) while lm_head keeps the original tied weight, so the merge must untie them.
    embed = embedding_key(layout)
    untie = tied and "lm_head.weight" not in layout.specs and any(
        k in adapter.modules or k in adapter.replacements for k in (embed, "lm_head.weight"))
    if untie:
        shape = (adapter.shape(adapter.replacements["lm_head.weight"]) if "lm_head.weight" in adapter.replacements
                 else layout.specs[embed].shape)
        if embed in adapter.replacements and adapter.shape(adapter.replacements[embed])[0] != shape[0]:
            raise StageError("merge", f"the adapter at {adapter.path} resizes the tied embeddings to "
                                      f"{adapter.shape(adapter.replacements[embed])[0]} tokens but carries no "
                                      f"lm_head: the output rows of the added tokens are in neither the adapter nor "
                                      "the base", hint="train with modules_to_save: [embed_tokens, lm_head] (or "
                                                       "PEFT's ensure_weight_tying) so the adapter holds both")
        specs.append(TensorSpec("lm_head.weight", out_dtype, shape))
    return specs, untie


def embedding_key(layout: Layout) -> str | None:
    return next((k for k in layout.specs if k.endswith(("embed_tokens.weight", "wte.weight",
                                                        "word_embeddings.weight"))), None)

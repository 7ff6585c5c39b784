"""Merge a LoRA adapter into its base, shard by shard, and prove the result.

The merge streams: base and adapter tensors are read one at a time by plain reads;
for each targeted weight ``scale * B @ A`` (DoRA: rescaled by its magnitude
vector) is computed in float32 and cast back; output shards are written
tensor by tensor and hashed while writing. Peak memory is a few tensors,
whatever the model size. QLoRA adapters are merged onto
the original 16-bit base weights, never onto dequantized 4-bit ones.

Verification is always on: logits of base+adapter (PEFT, unmerged) and of the
merged checkpoint are compared on fixed prompts, and the merged model must
differ from the base by more than rounding noise.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from packager.errors import InputFileError, StageError
from packager.models.adapter import ADAPTER_FILES, Adapter, read_adapter
from packager.models.checkpoint import TOKENIZER_FILES, Checkpoint
from packager.models.inference import load_causal_lm, teacher_forced_logits
from packager.models.safetensors_stream import Layout, TensorSpec, read_layout, read_tensor, write_sharded
from packager.models.tokenizer import chat_ids

# Greedy-token agreement and logit tolerances, per output dtype: bf16 keeps 8 mantissa bits, fp16 11.
# The mean |logit difference| is measured relative to the standard deviation of the reference logits.
TOLERANCE = {"bfloat16": {"min_agreement": 0.95, "max_relative_mean_abs": 0.15},
             "float16": {"min_agreement": 0.98, "max_relative_mean_abs": 0.01}}


# ---------------------------------------------------------------- planning

def read_base_layout(ckpt: Checkpoint) -> Layout:
    shards = [p for p in ckpt.weights if p.name.endswith(".safetensors")]
    if not shards:
        raise InputFileError(ckpt.path, "the base has no safetensors weights to merge into")
    return read_layout(shards)


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
        out_features, in_features = base.shape if mod.kind == "linear" else (base.shape[1], base.shape[0])
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
        specs.append(TensorSpec("lm_head.weight", out_dtype, shape))
    return specs, untie


def embedding_key(layout: Layout) -> str | None:
    return next((k for k in layout.specs if k.endswith(("embed_tokens.weight", "wte.weight",
                                                        "word_embeddings.weight"))), None)


# ---------------------------------------------------------------- merging

class _TensorSource:
    """Base and adapter tensors one at a time, by plain reads: a mapping's pages would stay resident, and
    an adapter grows with the layer count (peak RSS grew with the model through it)."""

    def __init__(self, layout: Layout, adapter: Adapter):
        self.layout = layout
        self.adapter_layout = read_layout([adapter.file])
        self._scratch = None

    def base(self, key: str):
        return read_tensor(self.layout, key)

    def adapter(self, key: str):
        return read_tensor(self.adapter_layout, key)

    def float32(self, tensor):
        """``tensor`` in float32, in one buffer reused for every merged tensor.

        A fresh float32 temporary per tensor (16-46 MB at 3 GB) fragmented glibc's heap as the layers went
        by: peak RSS grew 1.2-1.4x when the model doubled. Valid until the next call.
        """
        import torch

        n = tensor.numel()
        if self._scratch is None or self._scratch.numel() < n:
            self._scratch = None
            self._scratch = torch.empty(n, dtype=torch.float32)
        return self._scratch[:n].view(tensor.shape).copy_(tensor)


def merged_tensor(spec: TensorSpec, *, adapter: Adapter, source: _TensorSource, untie: bool):
    """The output tensor for ``spec``: base (or replacement) plus the LoRA delta, computed in float32."""
    import torch

    key = spec.name
    if key in adapter.replacements:
        weight = source.adapter(adapter.replacements[key])
    elif untie and key == "lm_head.weight":
        weight = source.base(embedding_key(source.layout))  # the original tied weight, plus its own delta below
    else:
        weight = source.base(key)
    module = adapter.modules.get(key)
    if module is not None:
        weight = source.float32(weight)
        a = source.adapter(module.a_key).to(torch.float32)
        b = source.adapter(module.b_key).to(torch.float32)
        if module.kind == "embedding" or adapter.config.get("fan_in_fan_out"):
            weight.add_((b @ a).T, alpha=module.scale)
        else:
            weight.addmm_(b, a, alpha=module.scale)  # in place, one kernel: W += scale * B @ A
        if module.magnitude_key is not None:  # DoRA: W' = m * (W + sBA) / ||W + sBA|| per output row
            magnitude = source.adapter(module.magnitude_key).to(torch.float32)
            weight = (magnitude / weight.norm(p=2, dim=1)).unsqueeze(1) * weight
    if weight.is_floating_point():
        dtype = getattr(torch, {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[spec.dtype])
        weight = weight.to(dtype, copy=module is not None)  # never hand out the reused float32 buffer
    return weight


@dataclass
class MergeOutput:
    directory: Path
    digests: dict[str, object]  # file name -> FileDigest, computed while writing
    untied_lm_head: bool
    vocab_size: int | None
    stop_ids: list[int]


def stream_merge(ckpt: Checkpoint, adapter: Adapter, out_dir: Path, *, dtype: str,
                 shard_bytes: int) -> MergeOutput:
    """Write the merged weights, config, generation config and tokenizer into ``out_dir``."""
    from packager.models.tokenizer import no_chat_template_error, read_chat_template

    layout = read_base_layout(ckpt)
    check_adapter_fits_base(adapter, layout, base_name=ckpt.hub_id or str(ckpt.path))
    tokenizer_source = adapter.path if has_tokenizer(adapter.path) else ckpt.path
    if not read_chat_template(tokenizer_source):  # before any shard is written, naming the user's directory
        raise no_chat_template_error(tokenizer_source)
    config = json.loads((ckpt.path / "config.json").read_text())
    tied = bool(config.get("tie_word_embeddings", False))
    specs, untie = plan_output(adapter, layout, dtype=dtype, tied=tied)
    source = _TensorSource(layout, adapter)
    digests = write_sharded(out_dir, specs, lambda s: merged_tensor(s, adapter=adapter, source=source, untie=untie),
                            max_bytes=shard_bytes)
    vocab = next((s.shape[0] for s in specs if s.name == embedding_key(layout)), None)
    config.pop("quantization_config", None)
    config["dtype"] = dtype
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype
    if untie:
        config["tie_word_embeddings"] = False
    if vocab is not None:
        config["vocab_size"] = vocab
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    copy_tokenizer(tokenizer_source, out_dir)
    stop_ids = write_generation_config(ckpt.path, out_dir)
    return MergeOutput(out_dir, digests, untie, vocab, stop_ids)


def has_tokenizer(directory: Path) -> bool:
    return any((directory / n).is_file() for n in ("tokenizer.json", "tokenizer.model"))


def copy_tokenizer(source: Path, out_dir: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, out_dir / name)


def write_generation_config(base_dir: Path, out_dir: Path) -> list[int]:
    """generation_config.json whose eos_token_id lists every stop token of the chat template."""
    from packager.models.stop_tokens import chat_stop_token_ids

    chat_stops = chat_stop_token_ids(out_dir)  # refuses a tokenizer without a chat template
    base_file = base_dir / "generation_config.json"
    gen = json.loads(base_file.read_text()) if base_file.is_file() else {}
    existing = gen.get("eos_token_id")
    existing = [existing] if isinstance(existing, int) else list(existing or [])
    stops = sorted(set(existing) | set(chat_stops))
    gen["eos_token_id"] = stops if len(stops) > 1 else stops[0]
    gen.pop("transformers_version", None)
    gen.pop("_from_model_config", None)
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return stops


# ---------------------------------------------------------------- verification

FALLBACK_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "user", "content": "List three prime numbers."}],
    [{"role": "user", "content": "Translate 'good morning' into German."}],
]


def compare_logits(reference, candidate) -> dict:
    """Max and mean absolute logit difference and greedy (argmax) agreement over every position."""
    import torch

    diffs = [(r - c).abs() for r, c in zip(reference, candidate)]
    agree = sum(int((r.argmax(-1) == c.argmax(-1)).sum()) for r, c in zip(reference, candidate))
    positions = sum(r.shape[0] for r in reference)
    mean_abs = float(torch.cat([d.flatten() for d in diffs]).mean())
    scale = float(torch.cat([r.flatten() for r in reference]).std())  # logits' own spread: tolerances are relative
    return {"max_abs": float(max(d.max() for d in diffs)), "mean_abs": mean_abs, "relative_mean_abs": mean_abs / scale,
            "logit_std": scale, "greedy_agreement": agree / positions, "positions": positions}


def verify_merge(base_dir: Path, adapter_dir: Path, merged_dir: Path, *, conversations: list[list[dict]],
                 dtype: str, stop_ids: list[int]) -> tuple[dict, list[dict]]:
    """Compare the merged checkpoint with base+adapter (unmerged) and with the base alone.

    Returns the comparison and the merged model's golden answers (:mod:`packager.golden`).

    Raises:
        StageError: logits differ beyond the dtype's tolerance, or the merged model behaves like the base.
    """
    from transformers import AutoTokenizer

    from packager.models.golden import golden_questions, torch_golden

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    sequences = [chat_ids(tokenizer, c) for c in conversations]
    reference_model = load_causal_lm(base_dir, adapter_dir=adapter_dir, vocab_size=len(tokenizer))
    reference = teacher_forced_logits(reference_model, sequences)
    with reference_model.disable_adapter():
        base_logits = teacher_forced_logits(reference_model, sequences)
    del reference_model
    merged_model = load_causal_lm(merged_dir)
    merged = teacher_forced_logits(merged_model, sequences)
    golden = torch_golden(merged_model, tokenizer, golden_questions(conversations), stop_ids=stop_ids)
    del merged_model

    result = compare_logits(reference, merged)
    vs_base = compare_logits(base_logits, merged)
    adapter_effect = compare_logits(base_logits, reference)["mean_abs"]
    result.update({"prompts": len(sequences), "dtype": dtype, "mean_abs_vs_base": vs_base["mean_abs"],
                   "adapter_effect_mean_abs": adapter_effect, "tolerance": TOLERANCE[dtype]})
    tol = TOLERANCE[dtype]
    if adapter_effect == 0.0:
        raise StageError("merge verification", "the adapter changes nothing: base and base+adapter give identical "
                                               "logits (untrained adapter, or B matrices all zero)")
    if vs_base["mean_abs"] <= 2 * result["mean_abs"]:
        raise StageError("merge verification", f"the merged model behaves like the base: mean logit difference "
                                               f"to the base {vs_base['mean_abs']:.4g} vs {result['mean_abs']:.4g} "
                                               f"to base+adapter (the adapter's own effect is {adapter_effect:.4g})",
                         hint="the adapter's effect is within this dtype's rounding: merge with --dtype float16, "
                              "or train longer" if dtype == "bfloat16" else "train longer or with a higher rate")
    if result["greedy_agreement"] < tol["min_agreement"] or \
            result["relative_mean_abs"] > tol["max_relative_mean_abs"]:
        raise StageError("merge verification",
                         f"merged logits differ from base+adapter beyond {dtype} tolerance: greedy agreement "
                         f"{result['greedy_agreement']:.3f} (min {tol['min_agreement']}), mean |diff| "
                         f"{result['mean_abs']:.4g} = {result['relative_mean_abs']:.3f} of the logits' std "
                         f"(max {tol['max_relative_mean_abs']})")
    return result, golden


# ---------------------------------------------------------------- the stage

@dataclass
class MergeResult:
    run_dir: Path
    merged_dir: Path
    verification: dict
    already_done: bool = False


def _base_matches_recorded(run, ckpt: Checkpoint) -> None:
    """The base we merge onto must be byte-identical to the one the adapter was trained on."""
    train = run.manifest.stages.get("train")
    if train is None:
        return
    recorded = {Path(i.path).name: i.sha256 for i in train.inputs if Path(i.path).is_absolute()}
    for file in ckpt.weights + ckpt.config:
        if file.name in recorded and run.digest(file).sha256 != recorded[file.name]:
            raise StageError("merge", f"the base at {ckpt.path} is not the one this adapter was trained on: "
                                      f"{file.name} has sha256 {run.digest(file).sha256[:12]}…, the run recorded "
                                      f"{recorded[file.name][:12]}…",
                             hint="point base.model at the original base checkpoint")


def merge_into_run(run, *, ckpt: Checkpoint, adapter_dir: Path, dtype: str, shard_bytes: int,
                   conversations: list[list[dict]], method: str, base_cfg) -> MergeResult:
    """Stage ``merge``: stream-merge into RUN/merged, verify, record digests (hashed while writing)."""
    from packager.models.checkpoint import record_base

    adapter = read_adapter(adapter_dir)
    with run.stage("merge", parameters={"dtype": dtype, "shard_bytes": shard_bytes, "method": method}) as st:
        record_base(st, ckpt, base_cfg)
        for name in ADAPTER_FILES + TOKENIZER_FILES:
            if (adapter_dir / name).is_file():
                st.add_input(adapter_dir / name)
        out = st.output_dir("merged")
        merged = stream_merge(ckpt, adapter, out, dtype=dtype, shard_bytes=shard_bytes)
        for name, digest in merged.digests.items():
            st.known_digest(out / name, digest)
        verification, golden = verify_merge(ckpt.path, adapter_dir, out, conversations=conversations, dtype=dtype,
                                            stop_ids=merged.stop_ids)
        scales = sorted({round(m.scale, 6) for m in adapter.modules.values()})
        st.parameters.update({
            "base_weights": "original 16-bit safetensors of the base (never dequantized 4-bit)",
            "qlora": method == "qlora", "scales": scales, "rslora": bool(adapter.config.get("use_rslora")),
            "dora": any(m.magnitude_key for m in adapter.modules.values()),
            "lora_modules": len(adapter.modules), "replaced_tensors": sorted(adapter.replacements),
            "untied_lm_head": merged.untied_lm_head, "vocab_size": merged.vocab_size,
            "adapter_base": adapter.config.get("base_model_name_or_path")})
        st.metrics["verification"] = verification
        st.metrics["golden"] = golden
    return MergeResult(run.path, run.path / "merged", verification)


def merge_run(run_dir: Path | str, *, dtype: str | None = None) -> MergeResult:
    """``packager merge RUN``: merge the run's adapter onto the base it was trained on."""
    from packager.models.checkpoint import resolve_base
    from packager.config import parse_size
    from packager.run.settings import recorded_config
    from packager.data import read_split
    from packager.run.directory import Run

    run = Run.open(run_dir)
    cfg = recorded_config(run)
    adapter_dir = run.path / "train" / "adapter"
    if not adapter_dir.is_dir():
        raise StageError("merge", f"{run.path} has no adapter to merge (a full fine-tune is already merged: "
                                  f"{run.path / 'train' / 'model'})")
    ckpt = resolve_base(cfg.base)
    _base_matches_recorded(run, ckpt)
    eval_file = run.path / "data" / "eval.jsonl"
    conversations = read_split(eval_file)[: cfg.merge.verify_prompts] if eval_file.is_file() else []
    return merge_into_run(run, ckpt=ckpt, adapter_dir=adapter_dir, dtype=dtype or cfg.merge.dtype,
                          shard_bytes=parse_size(cfg.merge.shard_size), method=cfg.train.method,
                          conversations=conversations or FALLBACK_PROMPTS, base_cfg=cfg.base)


def merge_external(adapter_dir: Path | str, base_model: str, out_dir: Path | str, *, dtype: str = "bfloat16",
                   shard_size: str = "2GB") -> MergeResult:
    """``packager merge --adapter DIR --base MODEL --out RUN``: an adapter trained elsewhere."""
    from packager.models.checkpoint import resolve_base
    from packager.config import BaseModelConfig, parse_size
    from packager.run.directory import Run

    base_cfg = BaseModelConfig(model=base_model)
    ckpt = resolve_base(base_cfg)
    adapter_dir = Path(adapter_dir)
    _refuse_named_mismatch(read_adapter(adapter_dir), ckpt)
    run = Run.create(out_dir)
    return merge_into_run(run, ckpt=ckpt, adapter_dir=adapter_dir, dtype=dtype, shard_bytes=parse_size(shard_size),
                          method="lora", conversations=FALLBACK_PROMPTS, base_cfg=base_cfg)


def _refuse_named_mismatch(adapter: Adapter, ckpt: Checkpoint) -> None:
    """When both the adapter's recorded base and ours are Hub ids, they must be the same model."""
    from packager.models.checkpoint import HUB_ID

    named = adapter.config.get("base_model_name_or_path") or ""
    ours = ckpt.hub_id or ""
    if HUB_ID.fullmatch(named) and HUB_ID.fullmatch(ours) and named.lower() != ours.lower():
        raise StageError("merge", f"the adapter at {adapter.path} was trained on {named}, not on {ours}",
                         hint="merge onto the base model the adapter was trained on")

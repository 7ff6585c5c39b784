"""Stage ``export-adapter-gguf``: the LoRA itself as a llama.cpp GGUF adapter (Ollama ``ADAPTER``) beside the base
as f16 GGUF, checked by loading both in llama.cpp against base + adapter unmerged in float32."""

from __future__ import annotations

import json
from pathlib import Path

from packager.config import BaseModelConfig
from packager.errors import MissingPathError, StageError
from packager.models.adapter import read_adapter
from packager.models.checkpoint import resolve_base, text_config
from packager.models.gguf import read_gguf_metadata
from packager.models.stop_tokens import generation_stop_ids
from packager.run.artifacts import adapter_dir as run_adapter_dir, merged_model_dir
from packager.run.directory import Run
from packager.stages.export.convert import convert_to_gguf, require_gguf_tools, tool_versions
from packager.stages.export.gguf import gguf_metadata
from packager.stages.export.parity import PARITY_THRESHOLDS, gguf_parity, parity_failures, reference_outputs
from packager.stages.export.result import ExportResult


STAGE = "export-adapter-gguf"


def export_adapter_gguf(run: Run, base_cfg: BaseModelConfig, *, conversations: list[list[dict]]) -> ExportResult:
    """Convert the base, write the LoRA GGUF, and require parity with base + adapter (q8_0's thresholds)."""
    require_gguf_tools()
    adapter_dir = run_adapter_dir(run)
    if not adapter_dir.is_dir():
        raise MissingPathError(run.path, "has no LoRA adapter (train/adapter) to export as GGUF")
    merged = merged_model_dir(run)
    ckpt = resolve_base(base_cfg)
    name = run.manifest.run
    with run.stage(STAGE, parameters={"tools": tool_versions(), "thresholds": PARITY_THRESHOLDS["q8_0"]}) as st:
        for file in sorted(p for p in adapter_dir.iterdir() if p.is_file()):
            st.add_input(file)
        for file in ckpt.files:
            st.add_input(file)
        out = st.output_dir("export/adapter-gguf")
        base_gguf, adapter_gguf = out / f"{name}-base-f16.gguf", out / f"{name}-lora.gguf"
        base_config = json.loads((ckpt.path / "config.json").read_text())
        arch = lora_architecture(base_config)
        convert_to_gguf(ckpt.path, base_gguf, outtype="f16", metadata=gguf_metadata(run))
        if read_gguf_metadata(base_gguf)["architecture"] != arch:
            raise StageError("export", f"the converter wrote {base_gguf.name} as llama.cpp architecture "
                                       f"{read_gguf_metadata(base_gguf)['architecture']!r}, not {arch!r}")
        info = write_lora_gguf(read_adapter(adapter_dir), base_config, adapter_gguf, arch=arch)
        # Compared with base + adapter unmerged, which the two files compute; a bf16 merge differs at near-ties.
        ref = reference_outputs(ckpt.path, conversations, stop_ids=generation_stop_ids(merged),
                                adapter_dir=adapter_dir, tokenizer_dir=merged)
        st.metrics["reference"] = "base + adapter (PEFT, float32)"
        parity = gguf_parity(base_gguf, ref, lora_path=adapter_gguf)
        parity["failures"] = parity_failures("q8_0", parity)
        parity["passed"] = not parity["failures"]
        parity.update(info)
        if not parity["passed"]:
            raise StageError("export", "the LoRA GGUF on the base GGUF does not reproduce the merged model: "
                             + "; ".join(parity["failures"]))
        st.metrics["parity"] = parity
    return ExportResult(run.path, sorted((run.path / "export" / "adapter-gguf").iterdir()), {"adapter": parity}, {})


# model_type -> the llama.cpp architecture the pinned converter writes (general.architecture), for the
# families whose LoRA GGUF the family matrix has proven against base + adapter in llama.cpp
# (tests/stages/test_families.py). Mistral converts to llama.
LORA_ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
                      "gemma3": "gemma3", "gemma3_text": "gemma3", "phi3": "phi3", "gpt_neox": "gptneox",
                      "gpt2": "gpt2"}


def lora_architecture(base_config: dict) -> str:
    """The llama.cpp architecture of the base, refused before any conversion where LoRA GGUF is not proven."""
    model_type = base_config.get("model_type")
    if model_type not in LORA_ARCHITECTURES:
        raise StageError("export", f"LoRA GGUF export is not proven for model_type {model_type!r}; proven: "
                                   f"{', '.join(sorted(LORA_ARCHITECTURES))}", hint="export the merged model instead")
    return LORA_ARCHITECTURES[model_type]


def llama_rope_permute(weights, n_head: int, n_head_kv: int | None):
    """The row permutation llama.cpp's converter applies to Llama q/k projections (for its RoPE layout)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def gptneox_qkv_order(weights, n_head: int):
    """GPT-NeoX's fused query_key_value rows, per head [q, k, v], in the order llama.cpp's converter writes:
    all queries, then all keys, then all values (``conversion/gptneox.py``, ``modify_tensors``)."""
    head_dim = weights.shape[0] // n_head // 3
    return weights.reshape(n_head, 3, head_dim, *weights.shape[1:]).swapaxes(0, 1).reshape(weights.shape)


def _rows_as_converted(arch: str, key: str, b, config: dict):
    """The adapter's B rows reordered as the converter reorders the base weight's rows: W' = P W, so
    P (B A) = (P B) A. GPT-2's Conv1D needs nothing: PEFT's A and B are [r, in] and [out, r] there too."""
    n_head = config.get("num_attention_heads") or config["n_head"]
    if arch == "llama" and key.endswith("q_proj.weight"):
        return llama_rope_permute(b, n_head, n_head)
    if arch == "llama" and key.endswith("k_proj.weight"):
        return llama_rope_permute(b, n_head, config.get("num_key_value_heads"))
    if arch == "gptneox" and key.endswith("query_key_value.weight"):
        return gptneox_qkv_order(b, n_head)
    return b


def write_lora_gguf(adapter, base_config: dict, out_file: Path, *, arch: str) -> dict:
    """Write a PEFT LoRA as a llama.cpp LoRA GGUF for the base converted to llama.cpp architecture ``arch``,
    with each module's scale folded into its B matrix.

    llama.cpp scales every module by alpha / rank; writing alpha = 1 and B * (scale * rank) reproduces
    any mix of alpha/r, rsLoRA and rank/alpha patterns exactly.
    """
    import gguf
    import torch
    from safetensors import safe_open

    config = {**base_config, **text_config(base_config)}
    unsupported = [k for k, m in adapter.modules.items() if m.kind != "linear" or m.magnitude_key]
    if adapter.replacements or unsupported:
        raise StageError("export", "this adapter cannot be a llama.cpp LoRA GGUF: it carries "
                         + ", ".join(sorted(adapter.replacements) + unsupported)
                         + " (modules_to_save, embedding LoRA or DoRA)", hint="export the merged model instead")
    model_arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    names = gguf.get_tensor_name_map(model_arch, config.get("num_hidden_layers") or config["n_layer"])
    writer = gguf.GGUFWriter(str(out_file), arch=arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 1.0)
    tensors = safe_open(str(adapter.file), framework="pt")
    for key, module in sorted(adapter.modules.items()):
        gguf_name = names.get_name(key.removesuffix(".weight"))
        if gguf_name is None:
            raise StageError("export", f"no llama.cpp {arch} tensor name for {key}")
        a = tensors.get_tensor(module.a_key).to(torch.float32)
        b = tensors.get_tensor(module.b_key).to(torch.float32) * (module.scale * module.rank)
        b = _rows_as_converted(arch, key, b, config)
        writer.add_tensor(f"{gguf_name}.weight.lora_a", a.contiguous().numpy())
        writer.add_tensor(f"{gguf_name}.weight.lora_b", b.contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"modules": len(adapter.modules), "ranks": sorted({m.rank for m in adapter.modules.values()}),
            "architecture": arch}

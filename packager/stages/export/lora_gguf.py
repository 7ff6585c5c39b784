"""Stage ``export-adapter-gguf``: the LoRA itself as a llama.cpp GGUF adapter (Ollama ``ADAPTER``) beside the base
as f16 GGUF, checked by loading both in llama.cpp against base + adapter unmerged in float32."""

from __future__ import annotations

import json
from pathlib import Path

from packager.config import BaseModelConfig
from packager.errors import MissingPathError, StageError
from packager.models.adapter import read_adapter
from packager.models.checkpoint import resolve_base
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
        convert_to_gguf(ckpt.path, base_gguf, outtype="f16", metadata=gguf_metadata(run))
        info = write_lora_gguf(read_adapter(adapter_dir), json.loads((ckpt.path / "config.json").read_text()),
                               adapter_gguf)
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


def llama_rope_permute(weights, n_head: int, n_head_kv: int | None):
    """The row permutation llama.cpp's converter applies to Llama q/k projections (for its RoPE layout)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_lora_gguf(adapter, base_config: dict, out_file: Path) -> dict:
    """Write a PEFT LoRA as a llama.cpp LoRA GGUF, with each module's scale folded into its B matrix.

    llama.cpp scales every module by alpha / rank; writing alpha = 1 and B * (scale * rank) reproduces
    any mix of alpha/r, rsLoRA and rank/alpha patterns exactly.
    """
    import gguf
    import torch
    from safetensors import safe_open

    if base_config.get("model_type") != "llama":
        raise StageError("export", f"LoRA GGUF export supports Llama-architecture models, not "
                                   f"{base_config.get('model_type')!r}; export the merged model instead")
    unsupported = [k for k, m in adapter.modules.items() if m.kind != "linear" or m.magnitude_key]
    if adapter.replacements or unsupported:
        raise StageError("export", "this adapter cannot be a llama.cpp LoRA GGUF: it carries "
                         + ", ".join(sorted(adapter.replacements) + unsupported)
                         + " (modules_to_save, embedding LoRA or DoRA)", hint="export the merged model instead")
    n_layers = base_config["num_hidden_layers"]
    n_head, n_kv = base_config["num_attention_heads"], base_config.get("num_key_value_heads")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    writer = gguf.GGUFWriter(str(out_file), arch="llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 1.0)
    tensors = safe_open(str(adapter.file), framework="pt")
    for key, module in sorted(adapter.modules.items()):
        gguf_name = names.get_name(key.removesuffix(".weight"))
        if gguf_name is None:
            raise StageError("export", f"no llama.cpp tensor name for {key}")
        a = tensors.get_tensor(module.a_key).to(torch.float32)
        b = tensors.get_tensor(module.b_key).to(torch.float32) * (module.scale * module.rank)
        if key.endswith("q_proj.weight"):
            b = llama_rope_permute(b, n_head, n_head)
        elif key.endswith("k_proj.weight"):
            b = llama_rope_permute(b, n_head, n_kv)
        writer.add_tensor(f"{gguf_name}.weight.lora_a", a.contiguous().numpy())
        writer.add_tensor(f"{gguf_name}.weight.lora_b", b.contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"modules": len(adapter.modules), "ranks": sorted({m.rank for m in adapter.modules.values()})}

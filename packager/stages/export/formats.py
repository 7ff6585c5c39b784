"""``packager export RUN --format F``: one registry of export formats, each a stage of its own."""

from __future__ import annotations

from pathlib import Path

from packager.run.directory import Run
from packager.run.settings import recorded_config
from packager.stages.data.split import read_split
from packager.stages.export.gguf import export_gguf
from packager.stages.export.lora_gguf import export_adapter_gguf
from packager.stages.export.result import ExportResult
from packager.stages.export.safetensors import export_safetensors
from packager.stages.merge.verify import FALLBACK_PROMPTS


FORMATS = {
    "safetensors": "the merged checkpoint as published, with a model card",
    "gguf": "llama.cpp GGUF files (f16, bf16, q8_0, Q4_K_M, Q5_K_M, Q6_K), each checked for parity",
    "adapter-gguf": "the LoRA as a llama.cpp GGUF adapter plus the base as f16 GGUF (Ollama ADAPTER)",
}


def parity_conversations(run: Run, verify_prompts: int) -> list[list[dict]]:
    """What the GGUF parity checks compare on: held-out conversations, else the fallback prompts answered."""
    eval_file = run.path / "data" / "eval.jsonl"
    conversations = read_split(eval_file)[:verify_prompts] if eval_file.is_file() else []
    return conversations or [c + [{"role": "assistant", "content": "OK."}] for c in FALLBACK_PROMPTS]


def export_run(run_dir: Path | str, *, fmt: str, quants: tuple[str, ...] = (),
               shard_size: str | None = None) -> ExportResult:
    """Export the run in ``fmt`` (a key of :data:`FORMATS`) with the settings it was made with."""
    run = Run.open(run_dir)
    cfg = recorded_config(run)
    if fmt == "safetensors":
        return export_safetensors(run, cfg.export, shard_size=shard_size)
    conversations = parity_conversations(run, cfg.merge.verify_prompts)
    if fmt == "adapter-gguf":
        return export_adapter_gguf(run, cfg.base, conversations=conversations)
    return export_gguf(run, quants=list(quants or cfg.export.gguf_quants), conversations=conversations)

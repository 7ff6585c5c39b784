"""Export the merged checkpoint: safetensors as published (with a model card), and GGUF with parity checks.

Every GGUF is loaded back with llama.cpp and compared with the merged
checkpoint (:mod:`packager.llamacpp`); one that fails its quant type's
thresholds is moved to ``export/rejected/`` and recorded as failed, so nothing
downstream ships it. Nothing is downloaded or compiled at run time.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from packager.errors import MissingPathError, StageError
from packager.models.stop_tokens import generation_stop_ids
from packager.llamacpp import (PARITY_THRESHOLDS, Conversion, check_gguf_carries_chat_format, convert_to_gguf, gguf_parity, parity_failures, quantize_gguf, reference_outputs, require_gguf_tools, tool_versions, write_lora_gguf)
from packager.models.gguf import GGUF_TYPES, canonical_quant

@dataclass
class ExportResult:
    run_dir: Path
    files: list[Path]
    parity: dict
    rejected: dict


def _merged_dir(run) -> Path:
    merged = run.path / "merged"
    if not merged.is_dir():
        full = run.path / "train" / "model"
        if full.is_dir():
            return full
        raise MissingPathError(run.path, "has no merged model to export", hint=f"run: packager merge {run.path}")
    return merged


def merge_recorded_greedy(run, model_dir: Path, conversations: list[list[dict]]) -> list[list[int]] | None:
    """The merged model's greedy answers to the parity questions as the merge stage recorded them, if they
    are answers to these very questions by these very files (else None, and they are generated again)."""
    from packager.models.golden import golden_questions

    merge = run.manifest.stages.get("merge")
    if merge is None or model_dir != run.path / "merged" or not run.outputs_intact("merge"):
        return None
    golden = merge.metrics.get("golden") or []
    if [g["messages"] for g in golden] != golden_questions(conversations):
        return None
    return [g["tokens"] for g in golden]


def export_safetensors(run, cfg, *, shard_size: str | None = None) -> ExportResult:
    """Stage ``export-safetensors``: the merged checkpoint as published, with a model card."""
    from packager.card import render_model_card
    from packager.run.hashing import HashingWriter

    merged = _merged_dir(run)
    with run.stage("export-safetensors", parameters={"shard_size": shard_size}) as st:
        files = sorted(p for p in merged.iterdir() if p.is_file())
        for file in files:
            st.add_input(file)
        out = st.output_dir("export/safetensors")
        if shard_size:
            _reshard(merged, out, shard_size=shard_size, stage=st)
        for file in files:
            if shard_size and (file.name.endswith(".safetensors") or file.name.endswith(".index.json")):
                continue
            with open(file, "rb") as src, open(out / file.name, "wb") as dst:
                writer = HashingWriter(dst)
                shutil.copyfileobj(src, writer, 4 << 20)  # hashed while copying: read once
            st.known_digest(out / file.name, writer.digest())
        listed = [{"path": p.name, "size": p.stat().st_size, "sha256": st.digest_of(p).sha256}
                  for p in sorted(out.iterdir())]
        card = render_model_card(run, kind="merged", files=listed, license_cfg=cfg.export,
                                 stop_ids=generation_stop_ids(merged))
        (out / "README.md").write_text(card)
    return ExportResult(run.path, sorted((run.path / "export" / "safetensors").iterdir()), {}, {})


def _reshard(merged: Path, out: Path, *, shard_size: str, stage) -> None:
    from packager.models.checkpoint import inspect_checkpoint
    from packager.config import parse_size
    from packager.merge import read_base_layout
    from packager.models.safetensors_stream import read_tensor, write_sharded

    layout = read_base_layout(inspect_checkpoint(merged))
    digests = write_sharded(out, list(layout.specs.values()), lambda spec: read_tensor(layout, spec.name),
                            max_bytes=parse_size(shard_size))
    for name, digest in digests.items():
        stage.known_digest(out / name, digest)


def _gguf_metadata(run, cfg) -> dict:
    from packager.card import base_hub_id

    hub_id, _ = base_hub_id(run)
    meta = {"general.name": run.manifest.run}
    if hub_id:
        org, name = hub_id.split("/", 1)
        meta["general.base_models"] = [{"name": name, "organization": org,
                                        "repo_url": f"https://huggingface.co/{hub_id}"}]
    return meta


def export_gguf(run, cfg, *, quants: list[str], conversations: list[list[dict]]) -> ExportResult:
    """Stage ``export-gguf``: convert, quantize from f16, check chat format and parity of every file."""
    require_gguf_tools()
    merged = _merged_dir(run)
    quants = [canonical_quant(q) for q in quants]
    stop_ids = generation_stop_ids(merged)
    chat_template = (merged / "chat_template.jinja").read_text() if (merged / "chat_template.jinja").is_file() \
        else json.loads((merged / "tokenizer_config.json").read_text()).get("chat_template")
    name = run.manifest.run
    parity, rejected, timings, quant_info = {}, {}, {}, {}
    with run.stage("export-gguf", parameters={"quants": quants, "tools": tool_versions(),
                                              "thresholds": {q: PARITY_THRESHOLDS[q] for q in quants}}) as st:
        for file in sorted(p for p in merged.iterdir() if p.is_file()):
            st.add_input(file)
        out = st.output_dir("export/gguf")
        work = Path(tempfile.mkdtemp(prefix="gguf-work-", dir=run.path / ".packager"))
        metadata = _gguf_metadata(run, cfg)
        # The first conversion runs while the merged model's reference outputs are computed (another core).
        f16 = None
        if any(GGUF_TYPES[q][0] == "quantize" for q in quants):
            f16 = (out if "f16" in quants else work) / f"{name}-f16.gguf"
            first, first_type = "f16", "f16"
        else:
            first, first_type = quants[0], GGUF_TYPES[quants[0]][1]
        first_file = f16 or out / f"{name}-{first}.gguf"
        started = time.perf_counter()
        with Conversion(merged, first_file, outtype=first_type, metadata=metadata) as conversion:
            greedy = merge_recorded_greedy(run, merged, conversations)
            ref = reference_outputs(merged, conversations, stop_ids=stop_ids, greedy=greedy)
            st.metrics["reference_greedy"] = "recorded by merge" if greedy else "generated"
            st.metrics["reference_seconds"] = round(time.perf_counter() - started, 2)
            conversion.wait()
        timings[first] = conversion.seconds
        for quant in quants:
            target = out / f"{name}-{quant}.gguf"
            if quant == first:
                continue
            started = time.perf_counter()
            how, arg = GGUF_TYPES[quant]
            if how == "convert":
                convert_to_gguf(merged, target, outtype=arg, metadata=metadata)
            else:
                quant_info[quant] = quantize_gguf(f16, target, quant=quant)
            timings[quant] = round(time.perf_counter() - started, 2)
        for quant in quants:
            target = out / f"{name}-{quant}.gguf"
            started = time.perf_counter()
            meta = check_gguf_carries_chat_format(target, chat_template=chat_template, stop_ids=stop_ids)
            result = gguf_parity(target, ref)
            result["seconds"] = round(time.perf_counter() - started, 2)
            result.update(quant_info.get(quant, {}))
            result["failures"] = parity_failures(quant, result)
            result["passed"] = not result["failures"]
            result["gguf"] = {k: meta[k] for k in ("architecture", "file_type", "eos_token_id", "base_model")}
            parity[quant] = result
            if not result["passed"]:
                reject_dir = st.output_dir("export/rejected")
                shutil.move(str(target), reject_dir / target.name)
                rejected[quant] = result["failures"]
        shutil.rmtree(work, ignore_errors=True)
        st.metrics.update({"parity": parity, "seconds": timings, "rejected": rejected})
    files = sorted((run.path / "export" / "gguf").glob("*.gguf"))
    return ExportResult(run.path, files, parity, rejected)


def export_run(run_dir: Path | str, *, fmt: str, quants: tuple[str, ...] = (),
               shard_size: str | None = None) -> ExportResult:
    from packager.run.settings import recorded_config
    from packager.data import read_split
    from packager.run.directory import Run
    from packager.merge import FALLBACK_PROMPTS

    run = Run.open(run_dir)
    cfg = recorded_config(run)
    if fmt == "safetensors":
        return export_safetensors(run, cfg, shard_size=shard_size)
    eval_file = run.path / "data" / "eval.jsonl"
    conversations = read_split(eval_file)[: cfg.merge.verify_prompts] if eval_file.is_file() else []
    if not conversations:
        conversations = [c + [{"role": "assistant", "content": "OK."}] for c in FALLBACK_PROMPTS]
    if fmt == "adapter-gguf":
        return export_adapter_gguf(run, cfg, conversations=conversations)
    return export_gguf(run, cfg, quants=list(quants or cfg.export.gguf_quants), conversations=conversations)


def export_adapter_gguf(run, cfg, *, conversations: list[list[dict]]) -> ExportResult:
    """Stage ``export-adapter-gguf``: the base as f16 GGUF plus the LoRA as a GGUF adapter (Ollama ADAPTER),
    checked by loading both in llama.cpp and comparing with the merged model."""
    from packager.models.checkpoint import resolve_base
    from packager.models.adapter import read_adapter

    require_gguf_tools()
    adapter_dir = run.path / "train" / "adapter"
    if not adapter_dir.is_dir():
        raise MissingPathError(run.path, "has no LoRA adapter (train/adapter) to export as GGUF")
    merged = _merged_dir(run)
    ckpt = resolve_base(cfg.base)
    name = run.manifest.run
    with run.stage("export-adapter-gguf", parameters={"tools": tool_versions(),
                                                      "thresholds": PARITY_THRESHOLDS["q8_0"]}) as st:
        for file in sorted(p for p in adapter_dir.iterdir() if p.is_file()):
            st.add_input(file)
        for file in ckpt.files:
            st.add_input(file)
        out = st.output_dir("export/adapter-gguf")
        base_gguf, adapter_gguf = out / f"{name}-base-f16.gguf", out / f"{name}-lora.gguf"
        convert_to_gguf(ckpt.path, base_gguf, outtype="f16", metadata=_gguf_metadata(run, cfg))
        info = write_lora_gguf(read_adapter(adapter_dir), json.loads((ckpt.path / "config.json").read_text()),
                               adapter_gguf)
        # Compared with base + adapter unmerged, which the two files compute; a bf16 merge differs at near-ties.
        ref = reference_outputs(ckpt.path, conversations, stop_ids=generation_stop_ids(merged), adapter_dir=adapter_dir,
                                tokenizer_dir=merged)
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

"""Stage ``export-gguf``: the merged model as GGUF files, each loaded back with llama.cpp and checked.

The converter makes f16/bf16/q8_0; k-quants come from llama.cpp's quantize, always from the f16 file. A file
that fails its type's parity thresholds is moved to ``export/rejected/`` and recorded as failed, so nothing
downstream ships it. The first conversion runs while the merged model's float32 reference is computed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from packager.models.chat_template import ChatTemplate
from packager.models.gguf import GGUF_TYPES, canonical_quant
from packager.models.stop_tokens import generation_stop_ids
from packager.models.tokenizer import read_chat_template
from packager.run.artifacts import merged_model_dir
from packager.run.atomic import PARTIAL_PREFIX
from packager.run.directory import Run, StageWriter
from packager.run.settings import base_hub_id
from packager.models.tool_calls import split_call_cases, tool_call_format
from packager.serve.llama_server import check_llama_cpp_template, llama_server_binary
from packager.serve.llama_tools import TOOL_CASES, TOOL_MAX_TOKENS, check_llama_cpp_tool_calls
from packager.serve.parity import PARITY_CONVERSATIONS
from packager.stages.export.convert import Conversion, convert_to_gguf, require_gguf_tools, tool_versions
from packager.stages.export.parity import (PARITY_THRESHOLDS, Reference, check_gguf_carries_chat_format,
                                           gguf_parity, parity_failures, reference_outputs)
from packager.stages.export.quantize import quantize_gguf
from packager.stages.export.result import ExportResult
from packager.stages.merge.stage import recorded_golden_tokens


STAGE = "export-gguf"


def gguf_metadata(run: Run) -> dict:
    """GGUF lineage keys: the run's name, and the base model as a Hub repository when it has a Hub id."""
    hub_id, _ = base_hub_id(run)
    meta = {"general.name": run.manifest.run}
    if hub_id:
        org, name = hub_id.split("/", 1)
        meta["general.base_models"] = [{"name": name, "organization": org,
                                        "repo_url": f"https://huggingface.co/{hub_id}"}]
    return meta


def export_gguf(run: Run, *, quants: list[str], conversations: list[list[dict]]) -> ExportResult:
    """Stage ``export-gguf``: convert, quantize from f16, check chat format and parity of every file."""
    require_gguf_tools()
    merged = merged_model_dir(run)
    quants = [canonical_quant(q) for q in quants]
    with run.stage(STAGE, parameters={"quants": quants, "tools": tool_versions(),
                                      "thresholds": {q: PARITY_THRESHOLDS[q] for q in quants}}) as st:
        for file in sorted(p for p in merged.iterdir() if p.is_file()):
            st.add_input(file)
        out = st.output_dir("export/gguf")
        # A killed export leaves this behind (an f16 GGUF as large as the model): the next stage's sweep of
        # .partial-* entries removes it.
        with tempfile.TemporaryDirectory(prefix=f"{PARTIAL_PREFIX}gguf-work-", dir=run.path / ".packager") as work:
            ref, quant_info = _make_files(run, st, merged, out, Path(work), quants=quants, conversations=conversations)
        parity, rejected = {}, {}
        for quant in quants:
            parity[quant] = _check_file(out / f"{run.manifest.run}-{quant}.gguf", quant, ref, merged,
                                        extra=quant_info.get(quant, {}))
            if not parity[quant]["passed"]:
                shutil.move(str(out / f"{run.manifest.run}-{quant}.gguf"), st.output_dir("export/rejected"))
                rejected[quant] = parity[quant]["failures"]
        st.metrics.update({"parity": parity, "rejected": rejected})
        st.metrics["template_engine"] = _llama_cpp_renders_template(out, merged)
        if (tool_calls := _llama_cpp_returns_tool_calls(run, out, merged)) is not None:
            st.metrics["tool_calls"] = tool_calls
    return ExportResult(run.path, sorted((run.path / "export" / "gguf").glob("*.gguf")), parity, rejected)


def _make_files(run: Run, st: StageWriter, merged: Path, out: Path, work: Path, *, quants: list[str],
                conversations: list[list[dict]]) -> tuple[Reference, dict]:
    """Every GGUF file into ``out`` (the f16 a k-quant needs goes to ``work`` unless asked for), and the float32
    reference, computed while the first conversion runs. Records the time of each."""
    name, metadata = run.manifest.run, gguf_metadata(run)
    f16 = None
    if any(GGUF_TYPES[q][0] == "quantize" for q in quants):
        f16 = (out if "f16" in quants else work) / f"{name}-f16.gguf"
        first, first_type = "f16", "f16"
    else:
        first, first_type = quants[0], GGUF_TYPES[quants[0]][1]
    started = time.perf_counter()
    with Conversion(merged, f16 or out / f"{name}-{first}.gguf", outtype=first_type, metadata=metadata) as conversion:
        greedy = recorded_golden_tokens(run, merged, conversations)
        ref = reference_outputs(merged, conversations, stop_ids=generation_stop_ids(merged), greedy=greedy)
        st.metrics["reference_greedy"] = "recorded by merge" if greedy else "generated"
        st.metrics["reference_seconds"] = round(time.perf_counter() - started, 2)
        conversion.wait()
    timings, quant_info = {first: conversion.seconds}, {}
    for quant in (q for q in quants if q != first):
        started = time.perf_counter()
        how, arg = GGUF_TYPES[quant]
        if how == "convert":
            convert_to_gguf(merged, out / f"{name}-{quant}.gguf", outtype=arg, metadata=metadata)
        else:
            quant_info[quant] = quantize_gguf(f16, out / f"{name}-{quant}.gguf", quant=quant)
        timings[quant] = round(time.perf_counter() - started, 2)
    st.metrics["seconds"] = timings
    return ref, quant_info


def _llama_cpp_renders_template(out: Path, merged: Path) -> dict:
    """The GGUFs' chat template (one text, byte-checked in each file) as llama.cpp's own engine renders it, against
    transformers, on the parity conversations; raises when they differ. The smallest file is loaded."""
    found = _smallest_with_server(out)
    if isinstance(found, dict):
        return found
    gguf, binary = found
    return {"checked": True, "gguf": gguf.name, **check_llama_cpp_template(
        gguf, ChatTemplate.from_model_dir(merged), PARITY_CONVERSATIONS, binary=binary)}


def _smallest_with_server(out: Path) -> tuple[Path, Path] | dict:
    """The smallest passed GGUF and the llama-server to load it in, or why a check with them cannot run."""
    files = sorted(out.glob("*.gguf"), key=lambda f: f.stat().st_size)
    binary = llama_server_binary()
    if binary is None or not files:
        return {"checked": False, "why": "no llama-server here (make setup builds it; PACKAGER_LLAMA_SERVER names "
                                         "one)" if files else "no GGUF passed"}
    return files[0], binary




def _llama_cpp_returns_tool_calls(run: Run, out: Path, merged: Path) -> dict | None:
    """For a run whose held-out rows call tools: llama-server on the smallest GGUF returns the calls the model
    makes as tool_calls (:mod:`packager.serve.llama_tools`); None for a run without tool calls."""
    cases = split_call_cases(run.path / "data" / "eval.jsonl")[:TOOL_CASES]
    fmt = tool_call_format(read_chat_template(merged))
    if not cases or fmt is None:
        return None
    found = _smallest_with_server(out)
    if isinstance(found, dict):
        return found
    gguf, binary = found
    return {"checked": True, "gguf": gguf.name, **check_llama_cpp_tool_calls(
        gguf, cases, fmt, max_tokens=TOOL_MAX_TOKENS, binary=binary)}


def _check_file(target: Path, quant: str, ref: Reference, merged: Path, *, extra: dict) -> dict:
    """The chat format and the parity of one GGUF file, with the verdict against its type's thresholds."""
    started = time.perf_counter()
    meta = check_gguf_carries_chat_format(target, chat_template=read_chat_template(merged),
                                          stop_ids=generation_stop_ids(merged))
    result = gguf_parity(target, ref)
    result["seconds"] = round(time.perf_counter() - started, 2)
    result.update(extra)
    result["failures"] = parity_failures(quant, result)
    result["passed"] = not result["failures"]
    result["gguf"] = {k: meta[k] for k in ("architecture", "file_type", "eos_token_id", "base_model")}
    return result

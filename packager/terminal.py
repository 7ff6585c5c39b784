"""packager owns the terminal: its own progress bars and summaries only.

What the libraries underneath print for themselves (Python warnings such as transformers' deprecation
notices, their loggers, the progress bars of weight loading, dataset maps and Hub downloads) is captured
instead of shown, and kept in the run's log file, ``RUN/.packager/logs/library.log``, once a run is known
(what came before is written there then). ``packager --verbose`` shows it all as the libraries print it.

Nothing here imports a heavy library: the switches are environment variables read at the libraries' import
and standard ``logging`` handlers, and transformers, which installs a stderr handler of its own when its
logging module loads, is adjusted right after that import (:class:`_AfterImport`).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys
from pathlib import Path

LOG_FILE = Path("logs") / "library.log"
"""Where in a run's state directory the captured output goes."""
LIBRARY_LOGGERS = ("py.warnings", "transformers", "datasets", "peft", "trl", "accelerate", "torch", "bitsandbytes",
                   "huggingface_hub", "filelock", "urllib3", "httpx", "unsloth")
QUIET_ENVIRONMENT = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # also transformers' own bars ("Loading weights"), which follow it
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # dataset map/filter bars (TRL tokenizes with map)
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


class _Capture(logging.Handler):
    """Keeps every record: in memory until a run's log file is known, then in that file."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
        self.pending: list[str] = []
        self.file: Path | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.pending.append(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 (a log line must never fail the stage it describes)
            return
        self._flush()

    def write_to(self, file: Path) -> None:
        self.file = file
        self._flush()

    def _flush(self) -> None:
        """Append what is pending to the run's log file; a run that cannot be written to (read-only, moved)
        keeps it pending rather than failing the command."""
        if self.file is None or not self.pending:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.file, "a", encoding="utf-8") as out:
                out.writelines(self.pending)
            self.pending.clear()
        except OSError:
            pass


_capture: _Capture | None = None


def capture_library_output() -> None:
    """Route the libraries' warnings, logs and progress bars away from the terminal (idempotent)."""
    global _capture
    if _capture is not None:
        return
    _capture = _Capture()
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    logging.captureWarnings(True)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(_capture)
        logger.propagate = False
    if "transformers.utils.logging" in sys.modules:
        _adopt_transformers_logging(sys.modules["transformers.utils.logging"])
    else:
        sys.meta_path.insert(0, _AfterImport("transformers.utils.logging", _adopt_transformers_logging))


def keep_log_in(state_dir: Path) -> None:
    """The run is known: what was captured so far, and from now on, goes to its log file."""
    if _capture is not None:
        _capture.write_to(Path(state_dir) / LOG_FILE)


def _adopt_transformers_logging(module) -> None:
    """transformers' loggers log to our handler instead of the stderr handler it installs for itself."""
    module.disable_default_handler()
    module.get_logger().addHandler(_capture)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``then(module)`` once ``name`` has been imported (wherever and whenever that happens)."""

    def __init__(self, name: str, then) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # let the real finders find it, once
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module, then = spec.loader.exec_module, self.then

        def exec_then(module) -> None:
            exec_module(module)
            then(module)

        spec.loader.exec_module = exec_then
        return spec

"""Every error a user can cause, as one family of exception types.

Each type subclasses the builtin it refines (so ``except FileNotFoundError``
still works for library callers) and carries the offending path, field or
value. The CLI turns them into one paragraph and an exit code in one place
(:func:`packager.cli.main`); nothing else catches them.
"""

from __future__ import annotations

from pathlib import Path

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


class PackagerError(Exception):
    """Base of every error packager reports to a user.

    Attributes:
        exit_code: 1 for a failure of the work, 2 for bad input or usage.
        hint: the next thing to try, shown after the message.
    """

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class BadInputError(PackagerError):
    """Something the user gave us is wrong; exit code 2."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(BadInputError, ValueError):
    """A config file is invalid. ``problems`` lists every one as ``field.path: message``."""

    def __init__(self, path: Path | str, problems: list[str], *, hint: str | None = None):
        self.path = Path(path)
        self.problems = list(problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        body = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{self.path}: {count}:\n{body}", hint=hint)


class InputFileError(BadInputError, ValueError):
    """A file given as input is malformed, at an optional line and field."""

    def __init__(self, path: Path | str, message: str, *, line: int | None = None,
                 field: str | None = None, hint: str | None = None):
        self.path = Path(path)
        self.line = line
        self.field = field
        where = str(self.path) + (f":{line}" if line is not None else "")
        where += f" [{field}]" if field else ""
        super().__init__(f"{where}: {message}", hint=hint)


class MissingPathError(BadInputError, FileNotFoundError):
    """A file or directory the user pointed at does not exist or lacks a needed file."""

    def __init__(self, path: Path | str, message: str, *, hint: str | None = None):
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}", hint=hint)


class UnsafeInputError(BadInputError, PermissionError):
    """Input packager refuses to use without an explicit opt-in (pickle weights, remote code, path traversal)."""

    def __init__(self, subject: str, message: str, *, hint: str | None = None):
        self.subject = subject
        super().__init__(f"{subject}: {message}", hint=hint)


class ManifestError(BadInputError, ValueError):
    """A run's manifest.json cannot be read: invalid JSON, wrong shape, or a newer schema."""

    def __init__(self, path: Path | str, message: str, *, hint: str | None = None):
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}", hint=hint)


class RunConflictError(BadInputError, FileExistsError):
    """An output location already holds something that is not ours to overwrite."""

    def __init__(self, path: Path | str, message: str, *, hint: str | None = None):
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}", hint=hint)


class IntegrityError(PackagerError):
    """Recorded digests no longer match the files (``packager verify``)."""

    def __init__(self, run_dir: Path | str, problems: list[str]):
        self.run_dir = Path(run_dir)
        self.problems = list(problems)
        body = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{self.run_dir}: {len(problems)} integrity problem(s):\n{body}",
                         hint="an artifact changed after it was recorded; re-run the stage that made it")


class InterruptedStageError(PackagerError):
    """Ctrl-C (SIGINT) stopped a stage that can continue where it was; exit code 130, as for any interrupt."""

    exit_code = 130

    def __init__(self, stage: str, message: str, *, hint: str):
        self.stage = stage
        super().__init__(f"{stage}: interrupted: {message}", hint=hint)


class DiskFullError(PackagerError, OSError):
    """The disk filled up while a stage wrote its outputs; the stage was not recorded."""

    def __init__(self, stage: str, where: Path | str):
        self.stage = stage
        self.where = str(where)
        super().__init__(f"{stage}: no space left on device while writing {where}; nothing of this stage was "
                         "recorded and its partial output was removed",
                         hint="free some space (or put run.root on a larger disk) and re-run the same command")


class DependencyMissingError(PackagerError, ImportError):
    """An optional dependency needed for this command is not installed."""

    def __init__(self, package: str, purpose: str, *, install: str):
        self.package = package
        super().__init__(f"{package} is needed {purpose} but is not installed",
                         hint=f"install it with: {install}")


class StageError(PackagerError, RuntimeError):
    """A stage could not do its work (a check failed, a tool returned an error)."""

    def __init__(self, stage: str, message: str, *, hint: str | None = None):
        self.stage = stage
        super().__init__(f"{stage}: {message}", hint=hint)


class DatasetError(BadInputError, ValueError):
    """A dataset has problems; ``problems`` lists each with its file, line and field."""

    def __init__(self, problems: list, *, hint: str | None = None):
        self.problems = list(problems)
        body = "\n".join(f"  {p}" for p in problems[:200])
        more = f"\n  ... and {len(problems) - 200} more" if len(problems) > 200 else ""
        super().__init__(f"{len(problems)} problem(s) in the data:\n{body}{more}",
                         hint=hint or "fix the rows named above; `packager data check` re-checks in seconds")


def first_line(exc: BaseException, *, limit: int = 300) -> str:
    """An exception's first non-blank line, for a one-paragraph message; its type's name when it says nothing
    (``str(OSError())`` is empty, and ``splitlines()[0]`` of it raised IndexError in place of the message)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's and the allocator's ways of saying memory ran out (OutOfMemoryError subclasses RuntimeError)."""
    message = str(exc).lower()
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or \
        "out of memory" in message or "can't allocate memory" in message

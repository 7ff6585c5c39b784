"""Child processes that die with packager and are always stopped: the one launcher every stage uses.

The converter, llama.cpp's server and ``transformers serve`` run as children of packager. Each must end when
packager ends, however it ends: leaving the ``with`` block (a pass, a failure, Ctrl-C) stops the child's whole
process group, SIGTERM then SIGKILL; and if packager itself is killed (SIGKILL, where no ``finally`` runs) the
kernel kills the child through ``PR_SET_PDEATHSIG``.

The death signal is set by the child itself, in a small Python prelude that then ``exec``s the real command
(the setting survives ``execve``). A ``preexec_fn`` would run Python code between fork and exec, which can
deadlock on a lock another thread of packager held at the fork (torch runs threads). The signal fires when
the thread that started the child exits, so children are started from the thread that waits for them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

from packager.errors import StageError

# In the child: ask for SIGKILL when the parent dies, make sure the parent did not die already, then become the
# command. PR_SET_PDEATHSIG is option 1 of prctl(2).
_PRELUDE = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
if os.getppid() != int(sys.argv[1]):
    sys.exit("packager exited before its child started")
os.execvp(sys.argv[2], sys.argv[2:])
"""
STOP_GRACE_S = 20


class ChildProcess:
    """``with ChildProcess(command, log=f) as child:`` runs ``command`` until the block ends.

    ``child.poll()`` / ``child.returncode`` / ``child.wait()`` as for ``subprocess.Popen``; ``stop()`` ends the
    child's process group (also called on leaving the block, whatever the reason).
    """

    def __init__(self, command: list[str], *, log: IO | None = None, cwd: Path | None = None,
                 env: dict[str, str] | None = None):
        self.command = list(command)
        self.popen = subprocess.Popen([sys.executable, "-c", _PRELUDE, str(os.getpid()), *self.command],
                                      cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log or subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self, *, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to the child's process group (a server's own children too), SIGKILL after ``grace_s``."""
        if self.popen.poll() is not None:
            return
        _signal_group(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass  # it ended meanwhile


class CommandTimeout(StageError):
    """A command packager waits for (an engine, a linter, Go, the converter) did not finish in its time."""

    def __init__(self, what: str, command: list[str], timeout_s: float, *, setting: str | None = None):
        self.command, self.timeout_s = list(command), timeout_s
        super().__init__(what, f"`{shown(command)}` did not finish in {timeout_s:.0f} s and was stopped",
                         hint=f"if it is only slow, not hung, raise {setting}" if setting else None)


def shown(command: list[str], words: int = 2) -> str:
    """The program and its sub-commands (``podman build``, ``git push``), for messages: never its options or
    paths, which may be long or private."""
    subcommands = []
    for word in command[1:1 + words]:
        if word.startswith("-") or "/" in word or "=" in word:
            break
        subcommands.append(word)
    return " ".join([Path(command[0]).name, *subcommands])


def run_command(command: list[str], *, timeout_s: float, what: str, setting: str | None = None,
                stdout=subprocess.PIPE, input: str | None = None, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command to its end, at most ``timeout_s`` seconds; its output as text.

    Unlike ``subprocess.run(timeout=...)``, a timeout, Ctrl-C or any error stops the command's whole process
    group: ``subprocess.run`` kills only the direct child and then waits for the pipes, which a grandchild (an
    engine's build helper, ``go build``'s compiler) holds open, so a hung tool could still hang packager.

    Raises:
        CommandTimeout: it ran out of time (stopped, with its children); ``setting`` names the config key that
            sets ``timeout_s``, for the hint.
    """
    proc = subprocess.Popen(command, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=stdout, stderr=subprocess.PIPE if stdout is subprocess.PIPE else subprocess.STDOUT,
                            text=True, env=env, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(input, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise CommandTimeout(what, command, timeout_s, setting=setting) from None
    except BaseException:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return subprocess.CompletedProcess(command, proc.returncode, out or "", err or "")

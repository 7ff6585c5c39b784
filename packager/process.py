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

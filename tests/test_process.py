"""The one launcher of commands packager waits for: whatever a command does, it ends within its time."""

import os
import time

import pytest

from packager.process import CommandTimeout, run_command


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead; only its parent has not reaped it yet
        return open(f"/proc/{pid}/stat").read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_a_hung_command_is_stopped_with_its_children_and_named(tmp_path):
    """subprocess.run(timeout=) kills the direct child only, then waits for the pipe a grandchild still holds:
    a hung engine's helper would have kept packager waiting past every time limit."""
    pids = tmp_path / "pids"
    with pytest.raises(CommandTimeout, match=r"engine: `sh` did not finish in 1 s and was stopped"):
        run_command(["sh", "-c", f"sleep 600 & echo $! > {pids}; sleep 600"], timeout_s=1, what="engine")
    grandchild = int(pids.read_text())
    deadline = time.monotonic() + 10
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(grandchild), "the grandchild holding the pipe outlived the timeout"


def test_a_command_that_finishes_gives_its_output_and_status():
    done = run_command(["sh", "-c", "cat; echo err >&2; exit 3"], input="hello", timeout_s=30, what="t")
    assert (done.returncode, done.stdout, done.stderr) == (3, "hello", "err\n")

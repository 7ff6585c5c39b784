"""packager owns the terminal: the libraries' warnings, logs and progress bars go to the run's log file, not to
the user's screen, unless asked for with --verbose."""

import re
import subprocess
import sys

from packager.config import load_config

from support.runs import write_config


def train(config, *flags: str) -> subprocess.CompletedProcess:
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "packager", *flags, "train", "-c", str(config), "--dry-run"],
                          capture_output=True, text=True, env=env, timeout=600)


def captured_messages(log: str) -> list[str]:
    """The first line of each warning the libraries emitted, as the run's log file kept it."""
    return [m.group(1).strip()[-80:] for m in re.finditer(r"WARNING \[[\w.]+\] (.+)", log)]


def test_library_output_stays_in_the_run_log_unless_verbose(tmp_path, tiny_llama_dir):
    config = write_config(tmp_path, tiny_llama_dir)
    quiet = train(config)
    assert quiet.returncode == 0, quiet.stderr
    log_file = load_config(config).run_dir / ".packager" / "logs" / "library.log"
    messages = captured_messages(log_file.read_text())
    assert messages, "a training run makes the libraries warn (deprecations at least): they went somewhere"
    for message in messages:
        assert message not in quiet.stderr
    assert "Warning" not in quiet.stderr and "Loading weights" not in quiet.stderr, quiet.stderr
    assert "trained 3 steps" in quiet.stdout

    verbose = train(config, "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert any(message in verbose.stderr for message in messages), verbose.stderr[-3000:]

"""deploy's own rules, apart from the stages it runs (the full pipeline is tested in publish/test_publish.py)."""

import pytest
import yaml

from packager.config import load_config
from packager.errors import StageError
from packager.pipeline.deploy import DeployOptions, Plan, pipeline_stages

from support.runs import write_config


def build_step_skip(tmp_path, base, *, engine: str, fake_docker: str, options: DeployOptions | None = None):
    """The 'build vllm' step's skip rule, with a docker on PATH that answers as ``fake_docker`` and no podman."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "docker").write_text(fake_docker)
    (bin_dir / "docker").chmod(0o755)
    config = write_config(tmp_path, base)
    cfg = yaml.safe_load(config.read_text())
    cfg["containers"] = {"engine": engine, "targets": ["vllm"]}
    config.write_text(yaml.safe_dump(cfg))
    plan = Plan(load_config(config), config, options or DeployOptions(), tmp_path / "runs" / "t")
    step = next(s for s in pipeline_stages(plan) if s.name == "build vllm")
    return step.skip(plan)


DAEMON_DOWN = "#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n"


def test_a_named_engine_that_cannot_run_fails_the_deploy(tmp_path, tiny_llama_dir, monkeypatch):
    """containers.engine: docker with its daemon down had been downgraded to 'skipped', and a release
    pipeline went on to push without the image it was configured to build."""
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(StageError, match="`docker version` fails: is its daemon running"):
        build_step_skip(tmp_path, tiny_llama_dir, engine="docker", fake_docker=DAEMON_DOWN)


def test_with_engine_auto_no_working_engine_skips_the_builds(tmp_path, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    reason = build_step_skip(tmp_path, tiny_llama_dir, engine="auto", fake_docker=DAEMON_DOWN)
    assert reason == "no working container engine (Docker or Podman): context rendered only"
    with pytest.raises(StageError, match="--build: no working container engine"):
        build_step_skip(tmp_path, tiny_llama_dir, engine="auto", fake_docker=DAEMON_DOWN,
                        options=DeployOptions(build=True))

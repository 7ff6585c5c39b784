"""A base model from the Hub: the real huggingface_hub client against a local Hub (tests/support/hub_server.py)
holding the tiny Llama. Resolved at the commit its revision names (branch, tag, full sha), byte-identical to
what was put there, the commit recorded; a moved branch read anew, a pinned one kept; re-used offline; a
missing repo or revision named.

Hermetic: the hub is on 127.0.0.1 and huggingface_hub caches under tmp_path (point_huggingface_hub_at).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from packager.config import BaseModelConfig
from packager.errors import MissingPathError
from packager.models.checkpoint import record_base, resolve_base
from packager.run.directory import Run
from packager.run.manifest import read_manifest

from support.hub_server import point_huggingface_hub_at

REPO = "org/tiny-llama"


@pytest.fixture
def hub(local_hub, monkeypatch, tmp_path, tiny_llama_dir):
    """The tiny Llama as a model repo, tagged v1.0; huggingface_hub pointed at the hub, caching in tmp_path."""
    monkeypatch.chdir(tmp_path)  # REPO must not name a local directory
    local_hub.cache = point_huggingface_hub_at(local_hub, monkeypatch, tmp_path / "hf-home")
    local_hub.first = local_hub.add_repo(REPO, tiny_llama_dir, message="tiny llama")
    local_hub.tag(REPO, "v1.0")
    return local_hub


def contents(paths) -> dict[str, bytes]:
    return {Path(p).name: Path(p).read_bytes() for p in paths}


def weight_gets(hub) -> int:
    return sum(1 for method, path in hub.cdn_requests if method == "GET")


def test_a_hub_base_is_downloaded_at_the_commit_its_revision_names(hub, tiny_llama_dir, tmp_path):
    for revision in (None, "main", "v1.0", hub.first):
        ckpt = resolve_base(BaseModelConfig(model=REPO, revision=revision))
        assert ckpt.revision == hub.first and ckpt.hub_id == REPO, revision
        assert ckpt.path == hub.cache / "models--org--tiny-llama" / "snapshots" / hub.first
    assert contents(ckpt.files) == contents(tiny_llama_dir / p.name for p in ckpt.files)
    assert {p.name for p in ckpt.files} >= {"config.json", "generation_config.json", "model.safetensors",
                                           "tokenizer.json", "tokenizer_config.json"}
    assert weight_gets(hub) == 1  # the LFS weights came from the CDN once; the other revisions found them cached
    assert ("GET", "/api/models/org/tiny-llama/revision/v1.0") in hub.requests

    run = Run.create(tmp_path / "run")
    with run.stage("base") as st:
        record_base(st, ckpt, BaseModelConfig(model=REPO, revision="v1.0"))
    stage = read_manifest(run.path).stages["base"]
    assert stage.parameters["revision"] == hub.first and stage.parameters["hub_id"] == REPO
    weights = next(i for i in stage.inputs if i.path.endswith("model.safetensors"))
    assert weights.sha256 == hashlib.sha256((tiny_llama_dir / "model.safetensors").read_bytes()).hexdigest()


def test_packager_records_the_commit_of_a_hub_base_in_the_run(hub, runner, tmp_path):
    from packager.cli import cli
    from support.runs import write_config

    listed = runner.invoke(cli, ["base", "inspect", REPO, "--json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)["revision"] == hub.first  # progress bars go to stderr

    config = write_config(tmp_path, Path(REPO))
    text = config.read_text().replace(f"model: {REPO}", f"model: {REPO}\n  revision: v1.0")
    config.write_text(text)
    trained = runner.invoke(cli, ["train", "-c", str(config), "--dry-run"])
    assert trained.exit_code == 0, trained.output
    from packager.config import load_config

    stage = read_manifest(load_config(config).run_dir).stages["train"]
    assert stage.parameters["base_model"] == REPO and stage.parameters["revision"] == hub.first
    assert any(i.path.endswith(f"snapshots/{hub.first}/model.safetensors") for i in stage.inputs)


def test_a_moved_branch_is_read_anew_and_a_pinned_revision_is_kept(hub, tiny_llama_dir):
    first = resolve_base(BaseModelConfig(model=REPO))
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    newer = {p.name: p.read_bytes() for p in tiny_llama_dir.iterdir() if p.is_file()}
    newer["config.json"] = json.dumps({**config, "rms_norm_eps": 1e-5}).encode()
    second_sha = hub.add_repo(REPO, newer, message="retuned")

    moved = resolve_base(BaseModelConfig(model=REPO))
    pinned = resolve_base(BaseModelConfig(model=REPO, revision=hub.first))
    tagged = resolve_base(BaseModelConfig(model=REPO, revision="v1.0"))

    assert moved.revision == second_sha != first.revision and moved.path.name == second_sha
    assert json.loads((moved.path / "config.json").read_text())["rms_norm_eps"] == 1e-5
    assert pinned.revision == tagged.revision == hub.first and pinned.path == first.path
    assert (first.path / "config.json").read_bytes() == (tiny_llama_dir / "config.json").read_bytes()
    assert weight_gets(hub) == 1  # same weights (same sha256): the blob is shared by both snapshots


def test_a_downloaded_base_is_reused_offline_and_when_the_hub_is_gone(hub, monkeypatch):
    from huggingface_hub import constants

    online = {rev: resolve_base(BaseModelConfig(model=REPO, revision=rev)) for rev in (None, "v1.0", hub.first)}
    seen = len(hub.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1
    for rev, ckpt in online.items():
        again = resolve_base(BaseModelConfig(model=REPO, revision=rev))
        assert (again.path, again.revision) == (ckpt.path, hub.first)
    assert len(hub.requests) == seen  # not one request
    with pytest.raises(MissingPathError, match="could not fetch from the Hugging Face Hub") as never_fetched:
        resolve_base(BaseModelConfig(model=REPO, revision="dev"))
    assert "local checkpoint" in never_fetched.value.hint

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub.close()  # online, but the Hub is out of reach: the cached snapshot still serves
    assert resolve_base(BaseModelConfig(model=REPO, revision="v1.0")).revision == hub.first


def test_a_missing_repo_or_revision_is_named(hub):
    with pytest.raises(MissingPathError, match="org/nothing: no such model repository on the Hub"):
        resolve_base(BaseModelConfig(model="org/nothing"))
    with pytest.raises(MissingPathError, match="org/tiny-llama: has no revision 'v9' on the Hub") as revision:
        resolve_base(BaseModelConfig(model=REPO, revision="v9"))
    assert "base.revision" in revision.value.hint
    with pytest.raises(MissingPathError, match="has no revision"):
        resolve_base(BaseModelConfig(model=REPO, revision="0" * 40))
    hub.add_repo("org/no-weights", {"config.json": b'{"model_type": "llama"}', "tokenizer.json": b"{}"})
    with pytest.raises(MissingPathError, match="no weights found"):
        resolve_base(BaseModelConfig(model="org/no-weights"))

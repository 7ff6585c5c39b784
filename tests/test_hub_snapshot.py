"""packager.hub_snapshot against the local Hub (tests/support/hub_server.py): a repository at the commit its
revision names, re-used from huggingface_hub's cache offline, and each way of not getting it named with the
repository and the revision. The callers' own tests: tests/models/test_hub_base.py, tests/stages/test_data.py."""

from __future__ import annotations

import pytest

from packager.errors import MissingPathError
from packager.hub_snapshot import download_snapshot

from support.hub_server import point_huggingface_hub_at

REPO = "org/tickets"
FILES = {"README.md": "# tickets\n", "data/train.jsonl": '{"text": "hi"}\n'}
HINTS = {"revision_hint": "set data.train.revision", "instead": "a local file"}


@pytest.fixture
def hub(local_hub, monkeypatch, tmp_path):
    """A dataset repo tagged v1; huggingface_hub pointed at the hub, caching in tmp_path."""
    local_hub.cache = point_huggingface_hub_at(local_hub, monkeypatch, tmp_path / "hf-home")
    local_hub.first = local_hub.add_repo(REPO, FILES, repo_type="dataset")
    local_hub.tag(REPO, "v1", repo_type="dataset")
    return local_hub


def snapshot(revision: str | None = None, repo_id: str = REPO, repo_type: str = "dataset"):
    return download_snapshot(repo_id, repo_type=repo_type, revision=revision, **HINTS)


def test_a_snapshot_is_at_the_commit_its_revision_names_and_is_reused_offline(hub, monkeypatch):
    from huggingface_hub import constants

    for revision in (None, "main", "v1", hub.first):
        path, commit = snapshot(revision)
        assert (path, commit) == (hub.cache / "datasets--org--tickets" / "snapshots" / hub.first, hub.first)
    assert {p.relative_to(path).as_posix(): p.read_text() for p in path.rglob("*") if p.is_file()} == FILES

    seen = len(hub.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1, as read at import
    assert snapshot("v1") == snapshot() == snapshot(hub.first) == (path, hub.first)
    assert len(hub.requests) == seen  # not one request


def test_each_way_of_not_getting_a_snapshot_names_the_repository_and_the_revision(hub, monkeypatch):
    from huggingface_hub import constants

    with pytest.raises(MissingPathError, match="org/nothing: no such model repository on the Hub"):
        snapshot(repo_id="org/nothing", repo_type="model")
    with pytest.raises(MissingPathError, match="org/tickets: has no revision 'v9' on the Hub") as revision:
        snapshot("v9")
    assert revision.value.hint == HINTS["revision_hint"]

    hub.tokens = {"hf_good": "me"}
    monkeypatch.setenv("HF_TOKEN", "hf_bad")
    with pytest.raises(MissingPathError, match=r"org/tickets: could not fetch from the Hugging Face Hub "
                                               r"\(revision 'v1'\): the Hub refused the token \(HTTP 401"):
        snapshot("v1")
    monkeypatch.delenv("HF_TOKEN")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(MissingPathError, match=r"\(the default branch\): not in the local cache, and "
                                               "HF_HUB_OFFLINE is set") as offline:
        snapshot()
    assert offline.value.hint == "download it once with HF_HUB_OFFLINE unset, or give a local file"

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub.close()
    with pytest.raises(MissingPathError, match=r"org/tickets: could not fetch from the Hugging Face Hub "
                                               r"\(revision 'v1'\): ConnectError: ") as unreachable:
        snapshot("v1")
    assert unreachable.value.hint == "check the network, or give a local file"


def test_a_gated_repository_says_what_to_do(hub, monkeypatch):
    """A gated repo on the local Hub: its files answer GatedRepo, which huggingface_hub raises as
    GatedRepoError, to an account not granted access; once granted, the same call downloads it."""
    commit = hub.add_repo("org/gated", {"config.json": "{}"}, gated=True)
    hub.tag("org/gated", "v2")
    hub.tokens = {"hf_other": "someone"}
    monkeypatch.setenv("HF_TOKEN", "hf_other")
    with pytest.raises(MissingPathError, match="org/gated: is a gated model repository: reading revision 'v2' "
                                               "needs the token of an account that accepted") as refused:
        snapshot("v2", repo_id="org/gated", repo_type="model")
    assert "accept the conditions on its Hub page" in refused.value.hint
    hub.grant("org/gated", "someone")
    assert snapshot("v2", repo_id="org/gated", repo_type="model")[1] == commit

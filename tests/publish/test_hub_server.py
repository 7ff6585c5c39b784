"""The local Hub model (support/hub_server.py) against the real huggingface_hub client: downloads, revisions,
offline re-use, errors, tree pagination, resumed transfers, the three ways of pointing the client at it; and
the write API: repos, commits with parents, LFS uploads by sha256, tokens, card validation, faults.

Hermetic: the hub is on 127.0.0.1, every cache is under tmp_path, no token from the environment is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.hub_server import LocalHub, local_hub, point_huggingface_hub_at  # noqa: F401 (fixture)

huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import (  # noqa: E402
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (  # noqa: E402
    BadRequestError,
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

MB = 1024 * 1024


@pytest.fixture
def hub(local_hub, monkeypatch, tmp_path):
    """The hub, with huggingface_hub online (tests/conftest.py sets HF_HUB_OFFLINE=1) and anonymous. Tests
    using it pass endpoint= and cache_dir= explicitly."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    return local_hub


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def snapshot_files(folder: str | Path) -> dict[str, bytes]:
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


MODEL = {
    "config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}).encode(),
    "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(256)) * 4,  # LFS by name
    "tokenizer.json": b'{"version": "1.0"}',
    "nested/dir/notes.txt": "ünïcode file\n".encode(),
}


# ---------------------------------------------------------------- downloads


def test_snapshot_download_of_a_model_repo(hub, tmp_path):
    sha = hub.add_repo("org/tiny", MODEL)
    cache = tmp_path / "cache"

    path = snapshot_download("org/tiny", cache_dir=cache, endpoint=hub.url, token="hf_local")

    storage = cache / "models--org--tiny"
    assert Path(path) == storage / "snapshots" / sha
    assert snapshot_files(path) == MODEL
    assert (storage / "refs" / "main").read_text() == sha
    # Blobs are named by the etag the client read: git sha1 for plain files, sha256 (X-Linked-Etag) for LFS.
    assert (storage / "blobs" / git_blob_sha1(MODEL["config.json"])).is_file()
    assert (storage / "blobs" / hashlib.sha256(MODEL["model.safetensors"]).hexdigest()).is_file()
    assert ("GET", "/api/models/org/tiny/revision/main") in hub.requests
    assert ("GET", f"/api/models/org/tiny/tree/{sha}") in hub.requests
    assert ("HEAD", f"/api/resolve-cache/models/org/tiny/{sha}/config.json") in hub.requests  # followed 307
    # The LFS bytes came from the "CDN" (another origin), without the token; the Hub got it.
    cdn = [e for e in hub.exchanges if e.server == "cdn"]
    assert [e.method for e in cdn] == ["GET"] and cdn[0].status == 200
    assert "authorization" not in cdn[0].headers
    assert all(e.headers.get("authorization") == "Bearer hf_local" for e in hub.exchanges if e.server == "hub")


def test_snapshot_download_of_a_dataset_repo_with_a_large_lfs_file(hub, tmp_path, monkeypatch):
    files = {
        "README.md": b"---\nlicense: mit\n---\n# A dataset\n",
        "data/train-00000-of-00001.parquet": os.urandom(11 * MB),  # > 10 MB: LFS, fetched from the CDN
        "data/meta/info.json": b'{"rows": 3}',
    }
    sha = hub.add_repo("org/data", files, repo_type="dataset")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # for anything that reads it late; cache_dir wins

    path = snapshot_download("org/data", repo_type="dataset", cache_dir=tmp_path / "cache", endpoint=hub.url)

    assert Path(path) == tmp_path / "cache" / "datasets--org--data" / "snapshots" / sha
    assert snapshot_files(path) == files
    heads = [e for e in hub.exchanges if e.method == "HEAD" and e.target.endswith(".parquet")]
    assert [e.status for e in heads] == [302]  # X-Linked-Size / X-Linked-Etag were read off the redirect
    assert hub.cdn_requests == [("GET", f"/repos/{h[:2]}/{h[2:4]}/{h}")
                                for h in [hashlib.sha256(files["data/train-00000-of-00001.parquet"]).hexdigest()]]
    info = HfApi(endpoint=hub.url).dataset_info("org/data", files_metadata=True)
    assert info.sha == sha and info.id == "org/data" and info.private is False and info.gated is False
    lfs = {s.rfilename: s.lfs for s in info.siblings}
    assert lfs["README.md"] is None and lfs["data/train-00000-of-00001.parquet"].size == 11 * MB


def test_a_new_commit_moves_main_and_the_old_sha_still_downloads(hub, tmp_path):
    api = HfApi(endpoint=hub.url)
    first = hub.add_repo("org/tiny", MODEL)
    second = hub.add_repo("org/tiny", {**MODEL, "config.json": b'{"model_type": "mistral"}', "extra.txt": b"new"})
    assert first != second and hub.head("org/tiny") == second
    cache = tmp_path / "cache"

    latest = snapshot_download("org/tiny", cache_dir=cache, endpoint=hub.url)
    pinned = snapshot_download("org/tiny", revision=first, cache_dir=cache, endpoint=hub.url)

    assert Path(latest).name == second and Path(pinned).name == first
    assert snapshot_files(latest)["config.json"] == b'{"model_type": "mistral"}'
    assert snapshot_files(pinned) == MODEL
    assert api.model_info("org/tiny").sha == second
    assert api.model_info("org/tiny", revision=first).sha == first
    assert api.repo_info("org/tiny").last_modified > api.repo_info("org/tiny", revision=first).last_modified
    one = hf_hub_download("org/tiny", "config.json", revision=first, cache_dir=tmp_path / "c2", endpoint=hub.url)
    assert Path(one).read_bytes() == MODEL["config.json"]
    assert [f.path for f in api.list_repo_tree("org/tiny", revision=first, recursive=True)
            if f.path == "extra.txt"] == []


def test_files_are_reused_offline(hub, tmp_path, monkeypatch):
    sha = hub.add_repo("org/tiny", MODEL)
    cache = tmp_path / "cache"
    path = snapshot_download("org/tiny", cache_dir=cache, endpoint=hub.url)
    seen = len(hub.requests)

    assert snapshot_download("org/tiny", cache_dir=cache, endpoint=hub.url, local_files_only=True) == path
    assert snapshot_download("org/tiny", revision=sha, cache_dir=cache, local_files_only=True) == path
    one = hf_hub_download("org/tiny", "nested/dir/notes.txt", cache_dir=cache, local_files_only=True)
    assert Path(one).read_bytes() == MODEL["nested/dir/notes.txt"]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1, as read at import
    assert snapshot_download("org/tiny", cache_dir=cache, endpoint=hub.url) == path
    assert len(hub.requests) == seen  # not one request
    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download("org/other", cache_dir=cache, endpoint=hub.url)


def test_a_broken_transfer_resumes_with_a_range_request(hub, tmp_path):
    data = os.urandom(11 * MB)
    hub.add_repo("org/data", {"big.parquet": data}, repo_type="dataset")
    # http_get writes 10 MiB chunks: break after the first one, so that some bytes are kept and resumed from.
    hub.interrupt_next_download("org/data", "big.parquet", after_bytes=10 * MB + 12345, repo_type="dataset")

    path = hf_hub_download("org/data", "big.parquet", repo_type="dataset", cache_dir=tmp_path, endpoint=hub.url)

    assert Path(path).read_bytes() == data
    gets = [e for e in hub.exchanges if e.server == "cdn"]
    assert [(e.headers.get("range"), e.status) for e in gets] == [(None, 200), (f"bytes={10 * MB}-", 206)]


# ---------------------------------------------------------------- errors


def test_unknown_repo_revision_and_file_raise_the_hub_errors(hub, tmp_path):
    sha = hub.add_repo("org/tiny", MODEL)
    api = HfApi(endpoint=hub.url)
    kw = {"cache_dir": tmp_path / "cache", "endpoint": hub.url}

    with pytest.raises(RepositoryNotFoundError) as anonymous:
        snapshot_download("org/missing", **kw)
    assert anonymous.value.response.status_code == 401  # the Hub's answer to an anonymous request
    with pytest.raises(RepositoryNotFoundError) as authenticated:
        api.model_info("org/missing", token="hf_local")
    assert authenticated.value.response.status_code == 404
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/missing", "config.json", **kw)
    with pytest.raises(RepositoryNotFoundError):  # a model repo is not a dataset repo
        api.dataset_info("org/tiny")

    with pytest.raises(RevisionNotFoundError):
        snapshot_download("org/tiny", revision="no-such-branch", **kw)
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/tiny", revision="refs/convert/parquet")  # sent as refs%2Fconvert%2Fparquet
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/tiny", "config.json", revision="0" * 40, **kw)
    assert ("GET", "/api/models/org/tiny/revision/refs%2Fconvert%2Fparquet") in hub.requests
    assert api.revision_exists("org/tiny", "main") and not api.revision_exists("org/tiny", "dev")
    assert api.repo_exists("org/tiny") and not api.repo_exists("org/missing")

    with pytest.raises(RemoteEntryNotFoundError) as missing:
        hf_hub_download("org/tiny", "missing.bin", **kw)
    assert isinstance(missing.value, EntryNotFoundError)
    # X-Repo-Commit on the 404 lets the client remember that the file is absent at that commit.
    assert (tmp_path / "cache" / "models--org--tiny" / ".no_exist" / sha / "missing.bin").is_file()
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree("org/tiny", path_in_repo="no/such/dir"))
    assert api.file_exists("org/tiny", "nested/dir/notes.txt")
    assert not api.file_exists("org/tiny", "nested/dir")


# ---------------------------------------------------------------- API


def test_list_repo_tree_pages_through_link_headers(hub):
    files = {f"shards/{i // 40}/part-{i:03d}.txt": f"{i}".encode() for i in range(120)}
    files["model.safetensors"] = b"weights"
    sha = hub.add_repo("org/many", files)
    api = HfApi(endpoint=hub.url)

    entries = list(api.list_repo_tree("org/many", recursive=True))

    assert len(entries) == 121 + 4  # files, plus shards/ and shards/0, shards/1, shards/2
    assert sorted(e.path for e in entries if hasattr(e, "blob_id")) == sorted(files)
    assert {e.path for e in entries if hasattr(e, "tree_id")} == {"shards", "shards/0", "shards/1", "shards/2"}
    tree_gets = [e for e in hub.exchanges if "/tree/" in e.target]
    assert len(tree_gets) == 3 and "cursor=" in tree_gets[2].target  # 50 + 50 + 25 entries
    assert sorted(api.list_repo_files("org/many")) == sorted(files)
    by_path = {e.path: e for e in entries}
    assert by_path["shards/0/part-000.txt"].blob_id == git_blob_sha1(b"0")
    assert by_path["model.safetensors"].lfs.sha256 == hashlib.sha256(b"weights").hexdigest()
    top = list(api.list_repo_tree("org/many"))
    assert sorted(e.path for e in top) == ["model.safetensors", "shards"]
    inner = list(api.list_repo_tree("org/many", path_in_repo="shards/2", expand=True))
    assert len(inner) == 40 and {e.last_commit.oid for e in inner} == {sha}
    assert all(e.security.safe for e in inner)


def test_repo_info_metadata_and_the_smaller_endpoints(hub, tmp_path):
    sha = hub.add_repo("org/tiny", MODEL)
    hub.add_repo("org/tiny", {"dev.txt": b"dev"}, branch="dev")
    hub.tag("org/tiny", "v1.0", sha)
    api = HfApi(endpoint=hub.url)

    info = api.model_info("org/tiny", files_metadata=True, securityStatus=True)
    assert info.sha == sha and info.config == {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == set(MODEL)
    assert siblings["config.json"].blob_id == git_blob_sha1(MODEL["config.json"])
    assert siblings["config.json"].size == len(MODEL["config.json"]) and siblings["config.json"].lfs is None
    lfs = siblings["model.safetensors"].lfs
    assert lfs.sha256 == hashlib.sha256(MODEL["model.safetensors"]).hexdigest()
    assert lfs.size == len(MODEL["model.safetensors"]) and 120 < lfs.pointer_size < 140
    assert info.security_repo_status == {"scansDone": True, "filesWithIssues": []}
    assert api.model_info("org/tiny").siblings[0].size is None  # sizes only with files_metadata
    only = api.model_info("org/tiny", expand=["sha"])
    assert only.sha == sha and only.siblings is None and only.private is None
    assert api.model_info("org/tiny", revision="v1.0").sha == sha
    assert [s.rfilename for s in api.model_info("org/tiny", revision="dev").siblings] == ["dev.txt"]
    assert api.resolve_revision("org/tiny", revision="dev", cache_dir=tmp_path).resolved == hub.head("org/tiny", "dev")

    refs = api.list_repo_refs("org/tiny")
    assert {(b.name, b.target_commit) for b in refs.branches} == {("main", sha), ("dev", hub.head("org/tiny", "dev"))}
    assert [(t.name, t.ref) for t in refs.tags] == [("v1.0", "refs/tags/v1.0")]
    paths = api.get_paths_info("org/tiny", ["config.json", "nested", "absent.txt"])
    assert [(type(p).__name__, p.path) for p in paths] == [("RepoFile", "config.json"), ("RepoFolder", "nested")]


def test_commit_shas_are_the_ones_git_computes(hub, tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    files = {"a.txt": b"a", "sub/b.txt": b"b", "sub-x": b"c", "sub.y": b"d", "w.safetensors": b"w" * 10}
    sha = hub.add_repo("org/git", files, message="first commit")
    repo = tmp_path / "git"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for path in files:  # what git stores: the LFS pointer, which the /raw endpoint serves
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_bytes(_raw(hub, "org/git", path))
    date = "1704067200 +0000"
    env = {**os.environ, "GIT_AUTHOR_NAME": "LocalHub", "GIT_AUTHOR_EMAIL": "localhub@127.0.0.1",
           "GIT_COMMITTER_NAME": "LocalHub", "GIT_COMMITTER_EMAIL": "localhub@127.0.0.1",
           "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "commit.gpgsign=false", "commit", "-qm", "first commit"],
                   check=True, env=env)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert head.stdout.strip() == sha


def _raw(hub: LocalHub, repo_id: str, path: str) -> bytes:
    from huggingface_hub.utils import get_session

    response = get_session().get(f"{hub.url}/{repo_id}/raw/main/{path}")
    response.raise_for_status()
    return response.content


# ---------------------------------------------------------------- pointing the client at the hub


def test_code_that_passes_no_endpoint_reaches_the_hub_once_patched(local_hub, monkeypatch, tmp_path):
    """As packager's base-model download does: HfApi().model_info + snapshot_download, no endpoint, no cache_dir."""
    sha = local_hub.add_repo("org/tiny", MODEL)
    cache = point_huggingface_hub_at(local_hub, monkeypatch, tmp_path / "hf-home")

    commit = HfApi().model_info("org/tiny", revision="main").sha
    path = snapshot_download("org/tiny", revision=commit, allow_patterns=["*.json", "*.safetensors"])

    assert commit == sha and Path(path) == cache / "models--org--tiny" / "snapshots" / sha
    assert set(snapshot_files(path)) == {"config.json", "tokenizer.json", "model.safetensors"}
    assert huggingface_hub.model_info("org/tiny").sha == sha  # the module-level HfApi too
    assert Path(hf_hub_download("org/tiny", "config.json")).read_bytes() == MODEL["config.json"]


def test_a_child_process_uses_the_hub_through_its_environment(local_hub, tmp_path):
    sha = local_hub.add_repo("org/tiny", MODEL)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE")}
    code = "from huggingface_hub import snapshot_download; print(snapshot_download('org/tiny'))"
    done = subprocess.run([sys.executable, "-c", code], env={**env, **local_hub.env(tmp_path / "hf-home")},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path == tmp_path / "hf-home" / "hub" / "models--org--tiny" / "snapshots" / sha
    assert snapshot_files(path) == MODEL


# ---------------------------------------------------------------- writing


@pytest.fixture
def writable(hub, monkeypatch):
    """The hub with two users' tokens (``me`` also writes to ``team``); uploads over plain LFS, not Xet."""
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    hub.tokens = {"hf_me": "me", "hf_other": "other"}
    hub.orgs = {"me": ["team"]}
    return hub


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_repo_is_created_and_committed_to_through_the_real_client(writable, tmp_path):
    api = HfApi(endpoint=writable.url, token="hf_me")
    assert api.whoami()["name"] == "me" and [o["name"] for o in api.whoami()["orgs"]] == ["team"]
    url = api.create_repo("me/model", private=True)
    assert url.repo_id == "me/model" and url == f"{writable.url}/me/model"
    initial = writable.log("me/model")
    assert [c.message for c in initial] == ["initial commit"] and set(initial[0].files) == {".gitattributes"}
    api.create_repo("me/model", exist_ok=True)  # 409, passed over
    with pytest.raises(HfHubHTTPError) as exists:
        api.create_repo("me/model")
    assert exists.value.response.status_code == 409 and "You already created this model repo" in str(exists.value)

    files = {"README.md": b"---\nlicense: mit\nbase_model: org/base\n---\n# Model\n",
             "config.json": b'{"model_type": "llama"}',
             "model.safetensors": b"\x08" + bytes(300),  # LFS by .gitattributes
             "notes/big.txt": b"a" * (11 * MB),  # LFS by size
             "model.gguf": b"GGUF\x03\x00\x00\x00" + os.urandom(64)}  # LFS because binary (a NUL byte)
    info = api.create_commit("me/model", [CommitOperationAdd(p, d) for p, d in files.items()],
                             commit_message="Add the model", commit_description="All of it.")

    head = writable.log("me/model")[0]
    assert info.oid == head.sha == writable.head("me/model") and head.parent == initial[0].sha
    assert info.commit_url == f"{writable.url}/me/model/commit/{head.sha}"
    assert head.author == "me" and head.message == "Add the model\n\nAll of it."
    assert writable.files_at("me/model") == {**files, ".gitattributes": initial[0].files[".gitattributes"]}
    assert head.lfs == {"model.safetensors", "notes/big.txt", "model.gguf"}
    assert sorted(writable.lfs_uploads) == sorted(sha256_hex(files[p]) for p in head.lfs)
    tree = {e.path: e for e in api.list_repo_tree("me/model", recursive=True) if hasattr(e, "blob_id")}
    assert tree["model.gguf"].lfs.sha256 == sha256_hex(files["model.gguf"]) and tree["config.json"].lfs is None
    assert tree["config.json"].blob_id == git_blob_sha1(files["config.json"])
    assert [c.title for c in api.list_repo_commits("me/model")] == ["Add the model", "initial commit"]
    assert api.model_info("me/model").private is True
    with pytest.raises(RepositoryNotFoundError):  # private: not for anonymous readers, nor for other users
        HfApi(endpoint=writable.url, token=False).model_info("me/model")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=writable.url, token="hf_other").model_info("me/model")
    path = snapshot_download("me/model", cache_dir=tmp_path / "cache", endpoint=writable.url, token="hf_me")
    assert snapshot_files(path) == writable.files_at("me/model")

    # Unchanged files are dropped by create_commit (preupload's oid), LFS content the repo holds is not sent
    # again (the batch answer has no actions for it), a deletion is one line.
    puts = len(writable.cdn_requests)
    unchanged = [CommitOperationAdd(p, d) for p, d in files.items() if p != "notes/big.txt"]
    copy = CommitOperationAdd("copy.safetensors", files["model.safetensors"])
    again = api.create_commit("me/model", [*unchanged, copy, CommitOperationDelete("notes/big.txt")],
                              commit_message="Copy and delete")
    commit_body = [e.body for e in writable.exchanges if e.target == "/api/models/me/model/commit/main"][-1]
    lines = [json.loads(line) for line in commit_body.splitlines()]
    assert [(line["key"], line["value"].get("path")) for line in lines] == [
        ("header", None), ("lfsFile", "copy.safetensors"), ("deletedFile", "notes/big.txt")]
    assert len(writable.cdn_requests) == puts and again.oid == writable.head("me/model")
    assert "notes/big.txt" not in writable.files_at("me/model")
    assert "copy.safetensors" in writable.log("me/model")[0].lfs


def test_commits_have_parents_branches_and_the_hub_s_refusals(writable):
    api = HfApi(endpoint=writable.url, token="hf_me")
    api.create_repo("team/model")  # an organisation of the user
    first = api.create_commit("team/model", [CommitOperationAdd("a.txt", b"a")], commit_message="a").oid
    api.create_branch("team/model", branch="dev", revision=first)
    api.create_branch("team/model", branch="dev", exist_ok=True)
    dev = api.create_commit("team/model", [CommitOperationAdd("b.txt", b"b")], commit_message="b", revision="dev")
    assert writable.log("team/model", "dev")[0].parent == first and writable.head("team/model") == first
    assert set(writable.files_at("team/model", "dev")) == {".gitattributes", "a.txt", "b.txt"}

    someone = writable.edit("team/model", add={"c.txt": "c"}, delete=("a.txt",))  # main moved
    with pytest.raises(HfHubHTTPError) as stale:
        api.create_commit("team/model", [CommitOperationAdd("d.txt", b"d")], commit_message="d",
                          parent_commit=first)
    assert stale.value.response.status_code == 412
    assert "The branch was updated since you opened this page. Please refresh and try again." in str(stale.value)
    ok = api.create_commit("team/model", [CommitOperationAdd("d.txt", b"d")], commit_message="d",
                           parent_commit=someone[:7])  # a short sha, as the docs allow
    assert writable.log("team/model")[0].parent == someone and ok.oid == writable.head("team/model")

    with pytest.raises(EntryNotFoundError, match="A file with this name doesn't exist"):
        api.create_commit("team/model", [CommitOperationDelete("a.txt")], commit_message="gone already")
    with pytest.raises(RevisionNotFoundError):
        api.create_commit("team/model", [CommitOperationAdd("e.txt", b"e")], commit_message="e", revision="nope")
    with pytest.raises(HfHubHTTPError) as bad_path:
        api.create_commit("team/model", [CommitOperationAdd("..\\ddd", b"x")], commit_message="escape")
    assert bad_path.value.response.status_code == 422
    assert writable.head("team/model") == ok.oid and writable.head("team/model", "dev") == dev.oid


def test_tokens_users_and_namespaces(writable):
    other = HfApi(endpoint=writable.url, token="hf_other")
    bad = HfApi(endpoint=writable.url, token="hf_forged")
    writable.add_repo("me/public", {"a.txt": b"a"})

    with pytest.raises(HfHubHTTPError, match="Invalid user token"):
        bad.whoami()
    for call in (lambda: bad.create_repo("me/x", exist_ok=True), lambda: bad.model_info("me/public")):
        with pytest.raises(HfHubHTTPError) as refused:
            call()
        # The Hub's answer to a bad token, which the client does not take for a missing repo.
        assert refused.value.response.status_code == 401 and not isinstance(refused.value, RepositoryNotFoundError)
        assert "Invalid credentials in Authorization header" in str(refused.value)
    with pytest.raises(HfHubHTTPError) as namespace:
        other.create_repo("me/theirs")
    assert namespace.value.response.status_code == 403 and 'under the namespace "me"' in str(namespace.value)
    assert other.model_info("me/public").sha == writable.head("me/public")  # public: anyone reads it
    with pytest.raises(HfHubHTTPError) as read_only:
        other.create_commit("me/public", [CommitOperationAdd("b.txt", b"b")], commit_message="not mine")
    assert read_only.value.response.status_code == 403
    with pytest.raises(RepositoryNotFoundError):  # no token at all: the Hub's 401 for a repo route
        HfApi(endpoint=writable.url, token=False).create_commit(
            "me/public", [CommitOperationAdd("b.txt", b"b")], commit_message="anonymous")
    assert [c.message for c in writable.log("me/public")] == ["Commit 1 on main"]
    assert ("POST", "/api/repos/create") in writable.requests and not writable.lfs_uploads


def test_card_metadata_is_validated_before_anything_is_uploaded(writable, monkeypatch):
    api = HfApi(endpoint=writable.url, token="hf_me")
    api.create_repo("me/carded")
    weights = CommitOperationAdd("model.safetensors", b"\x08" + bytes(64))

    card = b"---\nbase_model: ./checkpoints/base\nlicense: mit\n---\n# Card\n"
    with pytest.raises(ValueError, match="Invalid metadata in README.md") as local_path:
        api.create_commit("me/carded", [CommitOperationAdd("README.md", card), weights], commit_message="card")
    assert ('"base_model" with value "./checkpoints/base" is not valid. Use a model id from https://hf.co/models.'
            in str(local_path.value))
    with pytest.raises(ValueError, match='"license" must be one of \\[apache-2.0, mit, .*, other, array\\]'):
        api.create_commit("me/carded", [CommitOperationAdd("README.md", b"---\nlicense: proprietary\n---\n")],
                          commit_message="card")
    assert not any("/preupload/" in path for _, path in writable.requests) and not writable.lfs_uploads
    with pytest.warns(UserWarning, match="Empty or missing yaml metadata"):
        api.create_commit("me/carded", [CommitOperationAdd("README.md", b"# No metadata\n")], commit_message="ok")
    good = b"---\nbase_model: [org/a, org/b]\nbase_model_relation: merge\nlicense: apache-2.0\n---\n"
    api.create_commit("me/carded", [CommitOperationAdd("README.md", good)], commit_message="good")
    assert writable.files_at("me/carded")["README.md"] == good

    # A client that skips validate-yaml meets the same rule at the commit (the 400 create_commit would raise).
    from huggingface_hub.utils import get_session, hf_raise_for_status

    payload = [{"key": "header", "value": {"summary": "raw"}},
               {"key": "file", "value": {"path": "README.md", "encoding": "base64",
                                         "content": __import__("base64").b64encode(card).decode()}}]
    response = get_session().post(f"{writable.url}/api/models/me/carded/commit/main",
                                  content=b"".join(json.dumps(line).encode() + b"\n" for line in payload),
                                  headers={"Authorization": "Bearer hf_me", "Content-Type": "application/x-ndjson"})
    with pytest.raises(BadRequestError, match="base_model"):
        hf_raise_for_status(response, endpoint_name="commit")
    monkeypatch.setattr(constants, "ENDPOINT", writable.url)  # ModelCard.validate reads it
    from huggingface_hub import ModelCard

    with pytest.raises(ValueError, match='- Error: "license" must be one of'):
        ModelCard("---\nlicense: proprietary\n---\n").validate()
    assert writable.files_at("me/carded")["README.md"] == good


def test_a_5xx_on_an_upload_is_retried_and_one_on_the_commit_is_raised(writable):
    api = HfApi(endpoint=writable.url, token="hf_me")
    api.create_repo("me/faulty")
    weights = b"\x08" + os.urandom(4096)
    writable.fail_next("PUT", "/upload/models/me/faulty/*", status=503)

    api.create_commit("me/faulty", [CommitOperationAdd("model.safetensors", weights)], commit_message="w")

    puts = [e for e in writable.exchanges if e.method == "PUT"]
    assert [e.status for e in puts] == [503, 200] and writable.lfs_uploads == [sha256_hex(weights)]
    assert writable.files_at("me/faulty")["model.safetensors"] == weights

    before = writable.head("me/faulty")
    writable.fail_next("POST", "/api/models/me/faulty/commit/main", status=500)
    more = b"\x08" + os.urandom(4096)
    with pytest.raises(HfHubHTTPError) as failed:  # _send_commit does not retry: a commit is no idempotent call
        api.create_commit("me/faulty", [CommitOperationAdd("more.safetensors", more)], commit_message="more")
    assert failed.value.response.status_code == 500 and "Internal Error" in str(failed.value)
    assert writable.head("me/faulty") == before and writable.lfs_uploads[-1] == sha256_hex(more)
    api.create_commit("me/faulty", [CommitOperationAdd("more.safetensors", more)], commit_message="more")
    assert writable.lfs_uploads.count(sha256_hex(more)) == 1  # stored by the failed attempt, not sent again
    assert writable.log("me/faulty")[0].parent == before

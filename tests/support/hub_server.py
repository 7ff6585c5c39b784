"""A local model of the Hugging Face Hub's HTTP API, read and write, for the real ``huggingface_hub`` client (2.4.0).

Written from huggingface_hub's own source (file_download.py, _snapshot_download.py, hf_api.py, _commit_api.py,
lfs.py, utils/_http.py, utils/_pagination.py) and its test suite (tests/test_hf_api.py, which runs against the
Hub's staging server and so records the Hub's answers), not from the Hub's code: every endpoint below names the
client function it serves, and answers with the status codes, headers and messages that function reads. Stdlib
only, plus PyYAML to read cards' front matter.

    hub = LocalHub(tokens={"hf_good": "me"})     # started: hub.url == "http://127.0.0.1:PORT"
    sha = hub.add_repo("org/model", {"config.json": b"{}", "model.safetensors": weights})
    ...
    hub.close()

or, in a test, the ``local_hub`` fixture (function scope, always closed; set ``local_hub.tokens`` to check tokens).

What is modelled: reading
-------------------------
* Repositories of type model, dataset and space, kept in memory, each a git-like history: ``add_repo``
  makes a commit whose tree is exactly the files given (not merged with the previous commit), ``edit`` one that
  changes some files of the branch head (someone else's commit), the write API below one as the Hub does; all
  with real git object ids: blob sha1 = sha1(b"blob <len>\\0" + bytes), tree and commit ids hashed like git's
  (dates 2024-01-01 + one minute per commit), so the same calls always give the same shas. The branch moves
  to the new commit, whose parent is the old head; old commits stay reachable by their full sha.
* LFS, as the Hub decides it (see "preupload" below): files over 10 MiB, names matching the repo's
  ``.gitattributes`` (the Hub's default one, ``LFS_PATTERNS``, for a repo without one), and binary content
  (a NUL byte in the first 512 bytes). In git such a file is its pointer (oid = sha1 of the pointer), its
  ``lfs.oid`` is the sha256 of the content.
* ``GET /api/{models,datasets,spaces}/{repo_id}[/revision/{rev}]``: HfApi.model_info / dataset_info /
  space_info (and so repo_info, repo_exists, revision_exists, resolve_revision, and the ``repo_info`` call
  snapshot_download makes for a branch). ``blobs=true`` (``files_metadata=True``) adds size, blobId and
  lfs {sha256, size, pointerSize} to siblings; ``expand=`` keeps only the properties asked for;
  ``securityStatus=true`` adds securityRepoStatus.
* ``GET /api/{type}s/{repo_id}/tree/{rev}[/{path}]?recursive=&expand=``: HfApi.list_repo_tree (via
  utils._pagination._paginate_pages; used by snapshot_download and list_repo_files). Cursor pagination
  with a ``Link: <absolute url>; rel="next"`` header, ``tree_page_size`` entries per page (the Hub uses
  1000, 50 with expand; 50 by default here so that tests reach the second page cheaply).
* ``POST /api/{type}s/{repo_id}/paths-info/{rev}``: HfApi.get_paths_info.
* ``GET /api/{type}s/{repo_id}/refs``: HfApi.list_repo_refs.
* ``GET /api/{type}s/{repo_id}/commits/{rev}``: HfApi.list_repo_commits (first-parent history, one page).
* ``GET /api/agent-harnesses``: utils._detect_agent's registry, fetched once per process; empty here.
* ``HEAD|GET /{repo_id}/resolve/{rev}/{path}`` (``/datasets/...``, ``/spaces/...``): hf_hub_download via
  file_download.get_hf_file_metadata (HEAD) and http_get (GET). As the Hub does:
    - a regular (git) file answers 307 to the relative ``/api/resolve-cache/{type}s/{repo_id}/{commit}/
      {path}``, which answers 200 with ``ETag: "<git blob sha1>"``, ``X-Repo-Commit``, ``Content-Length``.
      huggingface_hub follows same-origin redirects (utils._http._httpx2_follow_hub_redirects_with_backoff)
      and reads the metadata off the final response; it then GETs the resolve-cache url directly.
    - an LFS file answers 302 to a "CDN" on another port (another origin, so the client stops there and
      does not forward its token), with the metadata on the 302 itself: ``X-Repo-Commit``,
      ``X-Linked-Etag: "<sha256>"``, ``X-Linked-Size``. The client keeps the Location and GETs the bytes
      from the CDN. The blob is cached under its sha256 like on the Hub.
  Range requests (``bytes=a-b``, ``a-``, ``-n``) get 206 + Content-Range on resolve-cache and on the CDN:
  http_get sends ``Range: bytes=<done>-`` when a transfer breaks (``interrupt_next_download`` makes one
  break). 416 for a range past the end.
* ``GET /{repo_id}/raw/{rev}/{path}``: the git content (the pointer for an LFS file).
* Errors, with ``X-Error-Code``/``X-Error-Message`` as utils._http.hf_raise_for_status reads them:
  unknown (or private and not yours) repo -> 401 (no Authorization header) or 404, ``RepoNotFound`` ->
  RepositoryNotFoundError; unknown revision -> 404 ``RevisionNotFound`` -> RevisionNotFoundError; unknown
  file or tree path -> 404 ``EntryNotFound`` (with ``X-Repo-Commit`` on resolve, which hf_hub_download caches
  in ``.no_exist``) -> RemoteEntryNotFoundError (an EntryNotFoundError); a gated repo's files (``add_repo(...,
  gated=True)``, ``grant()``) -> 401/403 ``GatedRepo`` -> GatedRepoError, its metadata readable. Revisions are branch names, tags
  (``tag()``) and full 40-hex commit shas of that repo; names arrive URL-encoded (``refs%2Fconvert%2Fparquet``)
  and are decoded per path segment, so an unknown one is a clean RevisionNotFound.

What is modelled: writing (HF_HUB_DISABLE_XET=1, the plain LFS protocol)
------------------------------------------------------------------------
* Tokens: ``tokens`` maps a token to its user (``None``, the default: every token is valid and is the user
  ``me``); ``orgs`` maps a user to the organisations they may write to as well. A token not in ``tokens``
  gets 401 ``X-Error-Message: Invalid credentials in Authorization header`` on every Hub route, the one
  message hf_raise_for_status does not turn into RepositoryNotFoundError, so a bad token is an HfHubHTTPError
  401. A user reads public repos and their own private ones, and writes in their namespaces (403 elsewhere).
* ``GET /api/whoami-v2``: HfApi.whoami (``_inner_whoami``; its 401 becomes "Invalid user token").
* ``POST /api/repos/create`` {name, organization, type, visibility}: HfApi.create_repo. A new repo gets an
  "initial commit" holding the Hub's default ``.gitattributes``, as on the Hub; 409 when it exists
  (create_repo(exist_ok=True) passes over it), 403 for a namespace that is not the user's.
* ``POST /api/{type}s/{repo_id}/branch/{branch}`` {startingPoint}: HfApi.create_branch (409 if it exists).
* ``POST /api/validate-yaml`` {content, repoType}: HfApi._validate_yaml, which create_commit calls before
  any upload when README.md is among the additions (and ModelCard.validate, ``Accept: text/plain``).
  Modelled rules, with the Hub's messages: ``base_model`` (a string or list) must be Hub model ids
  (``"base_model" with value "X" is not valid. Use a model id from https://hf.co/models.``); ``license`` must
  be one of ``HUB_LICENSES`` (``"license" must be one of [...]``); ``base_model_relation`` one of
  ``BASE_MODEL_RELATIONS``. 400 ``{"errors": [{"message"}]}``, which _validate_yaml turns into
  ``ValueError("Invalid metadata in README.md. ...")``; no front matter is a warning, as on the Hub. The same
  rules are applied again to a README.md in a commit (400), as the Hub does for clients that skip the check.
* ``POST /api/{type}s/{repo_id}/preupload/{rev}`` {files: [{path, sample, size}]}: _commit_api.
  _fetch_upload_modes. Each file's ``uploadMode`` ("lfs" or "regular", see LFS above), ``shouldIgnore``
  (always false: .gitignore is not modelled) and ``oid``, the remote file's (sha256 for LFS, git sha1 for
  regular: what create_commit compares with ``_local_oid`` to drop unchanged files).
* ``POST /{repo_id}.git/info/lfs/objects/batch`` (``datasets/``, ``spaces/`` prefixes): lfs.
  post_lfs_batch_info, the git-lfs batch API with the basic transfer. An object the repo's LFS storage
  already holds (by sha256) gets no ``actions``, so _upload_lfs_files skips it; others get an ``upload``
  href on the CDN (a presigned-URL stand-in: no token needed) and a ``verify`` href on the Hub. A malformed
  oid gets a per-object ``error`` (-> ValueError "LFS batch API returned errors").
* ``PUT {cdn}/upload/...``: lfs._upload_single_part (via http_backoff, which retries 5xx). The body must
  hash to the oid (400 ``BadDigest`` otherwise); stored by sha256 and listed in ``lfs_uploads``.
* ``POST /{repo_id}.git/info/lfs/objects/verify`` {oid, size}: lfs_upload's verify step (404 if absent).
* ``POST /api/{type}s/{repo_id}/commit/{branch}``, NDJSON: _commit_api._send_commit /
  _prepare_commit_payload. Lines: ``header`` {summary, description, parentCommit}, ``file`` {path, content,
  encoding: base64}, ``lfsFile`` {path, algo, oid, size} (the object must be in the repo's LFS storage),
  ``deletedFile`` / ``deletedFolder`` {path} (404 ``EntryNotFound`` "A file with this name doesn't exist").
  The new commit's parent is the branch head; a ``parentCommit`` (full or a 5+ hex prefix) that is not the
  head answers 412 "The branch was updated since you opened this page. Please refresh and try again.", a
  path with ``..``, a backslash or ``.git/`` 422, a commit with no operation 400 "Add a line with the key
  `lfsFile`, `file` or `deletedFile`" (the Hub's messages, from huggingface_hub's tests). Answers
  {success, commitOid, commitUrl, hookOutput, pullRequestUrl}.
* Faults, for tests: ``fail_next(method, path_pattern, status=, times=)`` answers the next matching requests
  (on the Hub or the CDN) with that status before doing anything, e.g. a 503 on an LFS upload PUT (retried
  by http_backoff) or a 500 on the commit POST (not retried by _send_commit: create_commit raises).

Pointing huggingface_hub at it
------------------------------
huggingface_hub reads its environment once, at import (constants.py): ``HF_ENDPOINT`` -> ``ENDPOINT`` and
``HUGGINGFACE_CO_URL_TEMPLATE``, ``HF_HUB_OFFLINE`` (tests/conftest.py sets it to 1!), ``HF_HOME`` ->
``HF_HUB_CACHE``, ``HF_TOKEN_PATH``, ``HF_HUB_DISABLE_XET``; and hf_api.py builds a module-level
``api = HfApi()`` whose bound methods are the top-level ``huggingface_hub.model_info``, ``list_repo_tree``, ...
with the endpoint of that moment. Within pytest the library is already imported, so setting env vars is too
late. Three ways work:

1. Pass ``endpoint=hub.url`` (and ``cache_dir=``) to every call: ``HfApi(endpoint=hub.url)``,
   ``snapshot_download(..., endpoint=hub.url, cache_dir=...)``, ``hf_hub_download(..., endpoint=...)``.
   Offline mode must still be off: ``monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE",
   False)``, or every request raises OfflineModeIsEnabled; and Xet too for uploads (``HF_HUB_DISABLE_XET``).
2. ``point_huggingface_hub_at(hub, monkeypatch, hf_home)``: patches the constants above (ENDPOINT,
   HUGGINGFACE_CO_URL_TEMPLATE, HF_HUB_OFFLINE, HF_HOME/HF_HUB_CACHE/HF_ASSETS_CACHE/HF_XET_CACHE,
   HF_TOKEN_PATH, AGENT_HARNESSES_PATH, HF_HUB_DISABLE_XET) and ``huggingface_hub.hf_api.api.endpoint``, removes HF_TOKEN from
   the environment, and sets the matching env vars for child processes. Then code that passes no endpoint
   (``HfApi().model_info(...)``, ``snapshot_download(repo_id)``, ``HfApi(token=...).create_commit``, as
   packager does) reaches this hub and caches under ``hf_home/hub``; set HF_TOKEN afterwards for a token.
   Not covered: ``scan_cache_dir()`` without an argument (utils/_cache_manager imported HF_HUB_CACHE by
   name), and ``HF_HUB_DISABLE_PROGRESS_BARS`` (same in utils/tqdm).
3. A child process: ``env={**os.environ, **hub.env(hf_home)}`` (HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE=0,
   HF_HUB_DISABLE_XET=1, no HF_TOKEN) works as is, since it imports huggingface_hub afresh.

Left out, knowingly: Xet (no ``X-Xet-*`` headers or ``xetHash``, so the client downloads over plain HTTP;
uploads need HF_HUB_DISABLE_XET=1, and ``xet-write-token`` answers 501 saying so); the multipart LFS transfer
(every upload is one PUT); gated repos, token scopes (every valid token may write its namespaces) and
organisation roles; pull requests (``create_pr`` answers 501), tags through the API (``tag()`` only),
``CommitOperationCopy``, deleting branches, tags and repos, repo settings and renames/redirects; .gitignore
(``shouldIgnore`` is always false); the Hub's other card rules (``model-index``, ``datasets``, widget, ...)
and its check that a ``base_model`` exists; gzip on text files; short commit shas (except ``parentCommit``);
``cardData`` parsed from the README, model ``config`` beyond architectures/model_type, download counts,
likes; ``/api/models`` search; 400 for an unknown ``expand`` property (unknown ones are just left out); the
CDN's signed, expiring URLs (the Location has no signature).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import mimetypes
import re
import socket
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode

import pytest

__all__ = ["BASE_MODEL_RELATIONS", "HUB_LICENSES", "HubCommit", "LFS_PATTERNS", "LFS_THRESHOLD", "LocalHub",
           "local_hub", "point_huggingface_hub_at"]

LFS_THRESHOLD = 10 * 1024 * 1024
"""Files larger than this are LFS files whatever their name (the Hub refuses larger plain git files)."""

LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs", "*.mlmodel",
    "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl",
    "*.pt", "*.pth", "*.rar", "*.safetensors", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz",
    "*.zip", "*.zst", "*tfevents*",
)
"""Basename patterns the Hub's default .gitattributes for a new model repo sends to LFS (plus
``saved_model/**/*``). Dataset repos get more there (audio, images); not modelled."""

DEFAULT_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n"
                                for p in (*LFS_PATTERNS, "saved_model/**/*"))
"""The ``.gitattributes`` of the "initial commit" the Hub makes in a repo it creates."""

HUB_LICENSES = (
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0",
    "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0",
    "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1",
    "lgpl-3.0", "isc", "h-research", "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0",
    "odc-by", "odbl", "openmdw-1.0", "openmdw-1.1", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa",
    "unlicense", "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license", "fair-noncommercial-research-license",
    "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4", "grok2-community", "gemma", "unknown",
    "other",
)
"""The license ids a card may name: the list the Hub's validate-yaml gave in its 400 answer in 2026."""

BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")
"""What ``base_model_relation`` may say (the Hub's model-card docs)."""

DEFAULT_USER = "me"
"""The user every token names when ``LocalHub.tokens`` is None."""

REPO_TYPES = {"model": "models", "dataset": "datasets", "space": "spaces"}
_PLURALS = {plural: singular for singular, plural in REPO_TYPES.items()}
_URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}  # constants.REPO_TYPES_URL_PREFIXES
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_SHA = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_EPOCH = 1704067200  # 2024-01-01T00:00:00Z: commit n of a repo is dated EPOCH + 60 n
_MAX_EXPAND_PAGE = 50  # the Hub's page size for tree listings with expand=true
_YAML_BLOCK = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")
"""huggingface_hub.repocard.REGEX_YAML_BLOCK: where a card's front matter is."""
_BAD_CREDENTIALS = "Invalid credentials in Authorization header"  # utils._http.hf_raise_for_status knows it
_SERVER_ERROR = "Internal Error - We're working hard to fix this as soon as possible!"


# ---------------------------------------------------------------- git objects


@dataclass(frozen=True)
class _Blob:
    data: bytes
    oid: str  # git blob sha1 of what git stores: the content, or the LFS pointer
    sha256: str | None = None  # LFS files only
    pointer: bytes | None = None  # LFS files only

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def git_bytes(self) -> bytes:
        return self.pointer if self.pointer is not None else self.data

    @property
    def remote_oid(self) -> str:
        """What preupload calls the file's oid: sha256 for LFS, the git sha1 otherwise (_local_oid's rule)."""
        return self.sha256 or self.oid


def _git_sha1(kind: str, body: bytes) -> str:
    return hashlib.sha1(f"{kind} {len(body)}\0".encode() + body).hexdigest()


def _lfs_patterns(gitattributes: bytes | None) -> list[str]:
    """The ``filter=lfs`` patterns of a .gitattributes (the Hub's default ones when there is none)."""
    if gitattributes is None:
        return [*LFS_PATTERNS, "saved_model/**/*"]
    patterns = []
    for line in gitattributes.decode(errors="replace").splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and "filter=lfs" in fields[1:]:
            patterns.append(fields[0])
    return patterns


def _matches(path: str, pattern: str) -> bool:
    """git's attribute matching, as far as .gitattributes files on the Hub use it: a pattern without a slash
    matches the basename at any depth, one with a slash the whole path (``**`` any number of directories)."""
    if "/" not in pattern:
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    pattern = pattern.lstrip("/")
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, pattern.replace("**/", ""))


def _is_lfs(path: str, size: int, sample: bytes, patterns: list[str]) -> bool:
    """The Hub's choice for a new file (the preupload answer): LFS when .gitattributes says so, when the file
    is over 10 MiB, or when it is binary. The binary test is git's (a NUL byte, here in the 512-byte sample
    huggingface_hub sends); the Hub's own is not public."""
    return size > LFS_THRESHOLD or b"\0" in sample[:512] or any(_matches(path, p) for p in patterns)


def _make_blob(data: bytes, *, lfs: bool) -> _Blob:
    if not lfs:
        return _Blob(data=data, oid=_git_sha1("blob", data))
    sha256 = hashlib.sha256(data).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
    return _Blob(data=data, oid=_git_sha1("blob", pointer), sha256=sha256, pointer=pointer)


def _check_path(path: str) -> str | None:
    """Why the Hub refuses ``path`` inside a repo (422), or None."""
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or any(part in ("", ".", "..") for part in parts):
        return f"Invalid path: {path!r}"
    if parts[0] == ".git":
        return f"Invalid path: {path!r} is inside .git"
    return None


@dataclass
class _Commit:
    sha: str
    parent: str | None
    files: dict[str, _Blob]
    trees: dict[str, str]  # directory ("" = root) -> git tree sha
    children: dict[str, list[tuple[str, bool]]]  # directory -> [(name, is_dir)] in git order
    timestamp: int
    message: str
    author: str

    @property
    def date(self) -> str:
        return _iso(self.timestamp)

    def oid_of(self, path: str) -> str | None:
        blob = self.files.get(path)
        return blob.oid if blob is not None else self.trees.get(path)


@dataclass(frozen=True)
class HubCommit:
    """One commit as ``LocalHub.log`` gives it: for tests to assert what a push made."""

    sha: str
    parent: str | None
    author: str
    message: str
    files: dict[str, bytes]
    lfs: frozenset[str]
    """Paths stored in LFS (git holds their pointer)."""


def _iso(timestamp: int) -> str:
    """The Hub's date format, the one huggingface_hub.utils.parse_datetime expects."""
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _build_trees(files: dict[str, _Blob]) -> tuple[dict[str, str], dict[str, list[tuple[str, bool]]]]:
    children: dict[str, dict[str, bool]] = {"": {}}
    for path in files:
        parts = path.split("/")
        for depth in range(len(parts)):
            parent, name = "/".join(parts[:depth]), parts[depth]
            is_dir = depth < len(parts) - 1
            seen = children.setdefault(parent, {})
            if seen.get(name, is_dir) != is_dir:
                raise ValueError(f"{'/'.join(parts[:depth + 1])!r} is both a file and a directory")
            seen[name] = is_dir
            if is_dir:
                children.setdefault("/".join(parts[:depth + 1]), {})

    def git_order(item: tuple[str, bool]) -> str:  # git sorts a directory as if its name ended with "/"
        return item[0] + "/" if item[1] else item[0]

    ordered = {d: sorted(entries.items(), key=git_order) for d, entries in children.items()}
    trees: dict[str, str] = {}

    def tree_sha(directory: str) -> str:
        body = b""
        for name, is_dir in ordered[directory]:
            path = f"{directory}/{name}" if directory else name
            sha = tree_sha(path) if is_dir else files[path].oid
            body += f"{'40000' if is_dir else '100644'} {name}\0".encode() + bytes.fromhex(sha)
        trees[directory] = _git_sha1("tree", body)
        return trees[directory]

    tree_sha("")
    return trees, ordered


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool = False
    gated: bool = False  # files need an account the owner granted access (``granted``, or the owner)
    granted: set[str] = field(default_factory=set)
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    default_branch: str = "main"
    lfs: set[str] = field(default_factory=set)  # sha256 of every object the repo's LFS storage holds

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def resolve(self, revision: str) -> _Commit | None:
        sha = self.branches.get(revision) or self.tags.get(revision)
        if sha is None and _SHA.fullmatch(revision) and revision in self.commits:
            sha = revision
        return self.commits.get(sha) if sha else None

    def lfs_patterns(self, commit: _Commit | None) -> list[str]:
        attributes = commit.files.get(".gitattributes") if commit is not None else None
        return _lfs_patterns(attributes.data if attributes is not None else None)


def _is_repo_id(value: str) -> bool:
    return bool(_REPO_ID.fullmatch(value)) and "--" not in value and ".." not in value


# ---------------------------------------------------------------- the hub


@dataclass
class Exchange:
    """One request as the server saw it (``LocalHub.exchanges``)."""

    server: str  # "hub" or "cdn"
    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]  # names lower-cased
    status: int | None = None
    body: bytes | None = None  # the request body, for the hub only (the CDN's are the LFS uploads)


class LocalHub:
    """The Hub's API on 127.0.0.1 (see the module docstring). Started on construction; ``close()``.

    Args:
        tree_page_size: entries per page of a tree listing.
        tokens: token -> user name; None accepts every token as the user ``me`` (``DEFAULT_USER``).
        orgs: user -> organisations whose namespaces the user may write to as well.
    """

    def __init__(self, *, tree_page_size: int = 50, tokens: dict[str, str] | None = None,
                 orgs: dict[str, list[str]] | None = None):
        self.tree_page_size = tree_page_size
        self.tokens = tokens
        """Token -> user; may be set on a started hub (``local_hub.tokens = {"hf_good": "me"}``)."""
        self.orgs = dict(orgs or {})
        self.requests: list[tuple[str, str]] = []
        """(method, path without query) of every request to the hub (not the CDN), in arrival order."""
        self.cdn_requests: list[tuple[str, str]] = []
        """Same, for the LFS "CDN" (another port: another origin for huggingface_hub), uploads included."""
        self.exchanges: list[Exchange] = []
        """Every request to either server, with its headers and the status answered."""
        self.lfs_uploads: list[str] = []
        """The sha256 of every LFS object an upload PUT stored, in order (a retried upload counts once)."""
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lfs: dict[str, _Blob] = {}  # sha256 -> blob, what the CDN serves
        self._interrupts: dict[str, int] = {}  # blob oid or sha256 -> bytes to send before dropping
        self._failures: list[list] = []  # [method, path pattern, status, message, times left]
        self._lock = threading.RLock()
        self._connections: set[socket.socket] = set()
        self._hub = self._serve("hub")
        self._cdn = self._serve("cdn")
        self.url = f"http://127.0.0.1:{self._hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._cdn.server_address[1]}"

    # -- content

    def add_repo(self, repo_id: str, files: dict[str, bytes | str] | Path, *, repo_type: str = "model",
                 branch: str = "main", message: str | None = None, private: bool = False,
                 gated: bool = False) -> str:
        """Commit ``files`` (path -> content, or a directory to read) as the whole tree of a new commit on
        ``branch`` (created if new, from the default branch), and return the commit's 40-hex sha. ``private``
        and ``gated`` (its files readable by the owner and the users in the repo's ``granted`` only) apply to
        a repo this call creates."""
        if repo_type not in REPO_TYPES:
            raise ValueError(f"repo_type must be one of {sorted(REPO_TYPES)}, not {repo_type!r}")
        if not _is_repo_id(repo_id):
            raise ValueError(f"not a Hub repo id (namespace/name): {repo_id!r}")
        if isinstance(files, (str, Path)):
            root = Path(files)
            if not root.is_dir():
                raise ValueError(f"not a directory: {root}")
            contents = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
                        if p.is_file() and ".git" not in p.relative_to(root).parts}
        else:
            contents = {path: data.encode() if isinstance(data, str) else bytes(data)
                        for path, data in files.items()}
        for path in contents:
            if _check_path(path):
                raise ValueError(f"not a path inside a repo: {path!r}")
        patterns = _lfs_patterns(contents.get(".gitattributes"))
        blobs = {path: _make_blob(data, lfs=_is_lfs(path, len(data), data, patterns))
                 for path, data in sorted(contents.items())}
        with self._lock:
            repo = self._repos.setdefault((repo_type, repo_id), _Repo(repo_type, repo_id, private=private,
                                                                      gated=gated))
            parent = repo.resolve(branch) if branch in repo.branches else repo.resolve(repo.default_branch)
            message = message or f"Commit {len(repo.commits) + 1} on {branch}"
            return self._commit(repo, branch, blobs, parent=parent, message=message,
                                author=("LocalHub", "localhub@127.0.0.1")).sha

    def edit(self, repo_id: str, *, add: dict[str, bytes | str] | None = None, delete: tuple[str, ...] = (),
             branch: str = "main", message: str | None = None, author: str = "someone-else",
             repo_type: str = "model") -> str:
        """Someone else's commit: change some files of ``branch``'s head (LFS decided as the Hub decides for
        uploads) and delete others; returns the new commit's sha, whose parent is the old head."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            head = repo.resolve(branch) if branch in repo.branches else None
            if head is None:
                raise KeyError(f"no branch {branch!r} in {repo_type} {repo_id}")
            files = dict(head.files)
            for path in delete:
                if files.pop(path, None) is None:
                    raise KeyError(f"no file {path!r} at the head of {branch!r}")
            added = {path: data.encode() if isinstance(data, str) else bytes(data)
                     for path, data in (add or {}).items()}
            patterns = _lfs_patterns(added.get(".gitattributes")) if ".gitattributes" in added \
                else repo.lfs_patterns(head)
            for path, data in added.items():
                if _check_path(path):
                    raise ValueError(f"not a path inside a repo: {path!r}")
                files[path] = _make_blob(data, lfs=_is_lfs(path, len(data), data, patterns))
            message = message or f"Edit by {author}"
            return self._commit(repo, branch, files, parent=head, message=message,
                                author=(author, f"{author}@users.noreply.huggingface.co")).sha

    def grant(self, repo_id: str, user: str, *, repo_type: str = "model") -> None:
        """Let ``user`` read a gated repo's files (as accepting its conditions on the Hub does)."""
        with self._lock:
            self._repos[(repo_type, repo_id)].granted.add(user)

    def files_at(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> dict[str, bytes]:
        """The content of every file at ``revision`` (branch, tag or sha), private repos included."""
        return dict(self.log(repo_id, revision, repo_type=repo_type)[0].files)

    def log(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> list[HubCommit]:
        """The first-parent history of ``revision``, newest first."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(f"no revision {revision!r} in {repo_type} {repo_id}")
            history = []
            while commit is not None:
                history.append(HubCommit(commit.sha, commit.parent, commit.author, commit.message,
                                         {p: b.data for p, b in commit.files.items()},
                                         frozenset(p for p, b in commit.files.items() if b.sha256)))
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return history

    def tag(self, repo_id: str, tag: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """Point ``tag`` at what ``revision`` resolves to; returns that commit sha."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(f"no revision {revision!r} in {repo_type} {repo_id}")
            repo.tags[tag] = commit.sha
            return commit.sha

    def head(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """The commit sha ``revision`` (branch or tag) resolves to."""
        with self._lock:
            commit = self._repos[(repo_type, repo_id)].resolve(revision)
            if commit is None:
                raise KeyError(f"no revision {revision!r} in {repo_type} {repo_id}")
            return commit.sha

    def interrupt_next_download(self, repo_id: str, filename: str, *, after_bytes: int,
                                revision: str = "main", repo_type: str = "model") -> None:
        """Make the next GET of this file's bytes (resolve-cache or CDN) announce the full length, send
        ``after_bytes`` of it and drop the connection, as a broken transfer does. Once."""
        with self._lock:
            commit = self._repos[(repo_type, repo_id)].resolve(revision)
            blob = commit.files[filename]
            self._interrupts[blob.sha256 or blob.oid] = after_bytes

    def fail_next(self, method: str, path: str, *, status: int = 500, times: int = 1,
                  message: str | None = None) -> None:
        """Answer the next ``times`` requests ``method path`` (on the hub or the CDN; ``path`` without the query,
        as sent, with fnmatch wildcards: ``"/upload/*"``) with ``status`` and nothing done. The rule is used up
        even where the client retries (http_backoff retries 408, 429 and 5xx, 5 times)."""
        with self._lock:
            self._failures.append([method.upper(), path, status, message or _SERVER_ERROR, times])

    def env(self, hf_home: str | Path) -> dict[str, str]:
        """Environment for a child process that should use this hub and cache under ``hf_home``.
        Remove HF_TOKEN / HUGGING_FACE_HUB_TOKEN from the child's environment too (``env`` can't)."""
        return {"HF_ENDPOINT": self.url, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "0",
                "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}

    # -- lifecycle

    def close(self) -> None:
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:  # keep-alive connections of huggingface_hub's pooled client
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> LocalHub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _serve(self, role: str) -> ThreadingHTTPServer:
        handler = type(f"{role.title()}Handler", (_HubHandler if role == "hub" else _CdnHandler,),
                       {"hub": self})
        server = _Server(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name=f"local-hub-{role}",
                         daemon=True).start()
        return server

    # -- lookups for the handlers

    def _repo(self, repo_type: str, repo_id: str) -> _Repo | None:
        with self._lock:
            return self._repos.get((repo_type, repo_id))

    def _resolve(self, repo: _Repo, revision: str) -> _Commit | None:
        with self._lock:
            return repo.resolve(revision)

    def _take_interrupt(self, key: str) -> int | None:
        with self._lock:
            return self._interrupts.pop(key, None)

    def _take_failure(self, method: str, path: str) -> tuple[int, str] | None:
        with self._lock:
            for rule in self._failures:
                if rule[0] == method and fnmatch.fnmatchcase(path, rule[1]) and rule[4] > 0:
                    rule[4] -= 1
                    return rule[2], rule[3]
        return None

    def _user_for(self, token: str) -> str | None:
        return DEFAULT_USER if self.tokens is None else self.tokens.get(token)

    def _can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (namespace == user or namespace in self.orgs.get(user, ()))

    def _can_read(self, user: str | None, repo: _Repo) -> bool:
        return not repo.private or self._can_write(user, repo.namespace)

    def _commit(self, repo: _Repo, branch: str, files: dict[str, _Blob], *, parent: _Commit | None,
                message: str, author: tuple[str, str]) -> _Commit:
        """A commit of exactly ``files`` on ``branch``, hashed as git does; the caller holds the lock."""
        trees, children = _build_trees(files)
        timestamp = _EPOCH + 60 * len(repo.commits)
        signature = f"{author[0]} <{author[1]}> {timestamp} +0000"
        body = (f"tree {trees['']}\n" + (f"parent {parent.sha}\n" if parent else "")
                + f"author {signature}\ncommitter {signature}\n\n{message}\n").encode()
        sha = _git_sha1("commit", body)
        commit = _Commit(sha, parent.sha if parent else None, dict(files), trees, children, timestamp, message,
                         author[0])
        repo.commits[sha] = commit
        repo.branches[branch] = sha
        for blob in files.values():
            if blob.sha256:
                self._lfs[blob.sha256] = blob
                repo.lfs.add(blob.sha256)
        return commit


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # snapshot_download opens 8 connections at once


class _HTTPError(Exception):
    def __init__(self, status: int, code: str | None, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


# ---------------------------------------------------------------- HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx2's pool expects; every answer has a Content-Length
    hub: LocalHub
    role = "hub"
    user: str | None = None  # the user of the request's token

    def log_message(self, *args) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.hub._lock:
                self.hub._connections.discard(self.connection)

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def _handle(self) -> None:
        raw_path, _, query = self.path.partition("?")
        self.exchange = Exchange(self.role, self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        self.hub.exchanges.append(self.exchange)
        (self.hub.requests if self.role == "hub" else self.hub.cdn_requests).append((self.command, raw_path))
        body = self._read_body()
        if self.role == "hub":
            self.exchange.body = body
        # Decode each segment on its own: a revision sent as refs%2Fpr%2F1 stays one segment.
        segments = [unquote(s) for s in raw_path.split("/")[1:]]
        self.user = None
        try:
            failure = self.hub._take_failure(self.command, raw_path)
            if failure is not None:
                raise _HTTPError(failure[0], None, failure[1])
            self.user = self._authenticate()
            self.route(segments, parse_qs(query, keep_blank_values=True), body)
        except _HTTPError as e:
            self.send_error_json(e.status, e.code, e.message, e.headers)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _authenticate(self) -> str | None:
        """The user of the request's token. The Hub refuses an unknown token on every route with this 401,
        which hf_raise_for_status leaves a plain HfHubHTTPError (not RepositoryNotFoundError)."""
        authorization = self.headers.get("Authorization") or ""
        if self.role != "hub" or not authorization.startswith("Bearer "):
            return None
        user = self.hub._user_for(authorization[len("Bearer "):].strip())
        if user is None:
            raise _HTTPError(401, None, _BAD_CREDENTIALS)
        return user

    def route(self, segments: list[str], query: dict[str, list[str]], body: bytes) -> None:
        raise NotImplementedError

    def respond(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.exchange.status = status
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), "X-Request-Id": f"Root=1-{uuid.uuid4().hex}", **headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def respond_json(self, data, headers: dict[str, str] | None = None) -> None:
        self.respond(200, {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
                     json.dumps(data).encode())

    def send_error_json(self, status: int, code: str | None, message: str, headers: dict[str, str]) -> None:
        extra = {"X-Error-Code": code} if code else {}
        if "\n" not in message:  # a header is one line; the body has the whole message either way
            extra["X-Error-Message"] = message
        self.respond(status, {"Content-Type": "application/json; charset=utf-8", **extra, **headers},
                     json.dumps({"error": message}).encode())

    def send_bytes(self, blob: _Blob, data: bytes, headers: dict[str, str], *, interrupt_key: str) -> None:
        """200 or 206 with ``data`` (honouring Range), or the planned broken transfer."""
        size = len(data)
        start, end = 0, size - 1
        status = 200
        requested = self.headers.get("Range")
        if requested is not None:
            match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", requested)
            if match and (match[1] or match[2]):  # anything else (several ranges, units) is ignored: 200
                if match[1]:
                    start = int(match[1])
                    end = min(int(match[2]), size - 1) if match[2] else size - 1
                else:
                    start = max(size - int(match[2]), 0)
                if start >= size or start > end:
                    self.respond(416, {"Content-Range": f"bytes */{size}", "Content-Type": "text/plain"},
                                 b"Requested Range Not Satisfiable")
                    return
                status = 206
                headers = {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
        part = data[start:end + 1]
        headers = {"Accept-Ranges": "bytes", **headers}
        cut = self.hub._take_interrupt(interrupt_key) if self.command == "GET" else None
        if cut is None:
            self.respond(status, headers, part)
            return
        self.exchange.status = status
        self.send_response(status)
        for name, value in {"Content-Length": str(len(part)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(part[:cut])
        self.wfile.flush()
        self.close_connection = True  # the client sees the body end early


def _content_headers(path: str) -> dict[str, str]:
    name = path.rsplit("/", 1)[-1]
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind == "application/json":
        kind += "; charset=utf-8"
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "")
    return {"Content-Type": kind,
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}; filename=\"{ascii_name}\";"}


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() in ("1", "true", "yes", "on")


class _HubHandler(_Handler):
    def route(self, segments: list[str], query: dict[str, list[str]], body: bytes) -> None:
        method = self.command
        if segments[:2] == ["api", "resolve-cache"] and len(segments) >= 7 and method in ("GET", "HEAD"):
            repo_type = _PLURALS.get(segments[2])
            if repo_type:
                return self.resolve_cache(repo_type, "/".join(segments[3:5]), segments[5], "/".join(segments[6:]))
        elif segments == ["api", "whoami-v2"] and method == "GET":
            return self.whoami()
        elif segments == ["api", "agent-harnesses"] and method == "GET":
            # utils._detect_agent fetches this registry once per process (best effort, no token); an empty
            # one detects no agent, whatever the environment says.
            return self.respond_json({"standardEnvVars": [], "harnesses": {}})
        elif segments == ["api", "repos", "create"] and method == "POST":
            return self.create_repo(_json_body(body))
        elif segments == ["api", "validate-yaml"] and method == "POST":
            return self.validate_yaml(_json_body(body))
        elif segments[:1] == ["api"] and len(segments) >= 5 and segments[1] in _PLURALS:
            return self.route_repo_api(_PLURALS[segments[1]], "/".join(segments[2:4]), segments[4:], query, body)
        elif segments[:1] == ["api"] and len(segments) == 4 and segments[1] in _PLURALS and method == "GET":
            return self.repo_info(_PLURALS[segments[1]], "/".join(segments[2:4]), None, query)
        else:
            repo_type = "model"
            if segments and segments[0] in ("datasets", "spaces"):
                repo_type, segments = _PLURALS[segments[0]], segments[1:]
            if (method == "POST" and len(segments) == 6 and segments[1].endswith(".git")
                    and segments[2:5] == ["info", "lfs", "objects"] and segments[5] in ("batch", "verify")):
                repo_id = f"{segments[0]}/{segments[1][:-len('.git')]}"
                lfs_route = self.lfs_batch if segments[5] == "batch" else self.lfs_verify
                return lfs_route(repo_type, repo_id, _json_body(body))
            if method in ("GET", "HEAD") and len(segments) >= 5 and segments[2] in ("resolve", "raw"):
                return self.resolve(repo_type, "/".join(segments[:2]), segments[3], "/".join(segments[4:]),
                                    raw=segments[2] == "raw")
        raise _HTTPError(404, None, "Sorry, we can't find the page you are looking for.")

    def route_repo_api(self, repo_type: str, repo_id: str, rest: list[str], query: dict, body: bytes) -> None:
        """``/api/{type}s/{namespace}/{name}/{rest...}``; a revision is the rest of the path."""
        method, action, revision = self.command, rest[0], "/".join(rest[1:])
        if method == "GET" and action == "revision" and revision:
            return self.repo_info(repo_type, repo_id, revision, query)
        if method == "GET" and action == "tree" and len(rest) >= 2:
            return self.tree(repo_type, repo_id, rest[1], "/".join(rest[2:]).strip("/"), query)
        if method == "GET" and rest == ["refs"]:
            return self.refs(repo_type, repo_id)
        if method == "GET" and action == "commits" and revision:
            return self.list_commits(repo_type, repo_id, revision)
        if method == "POST" and action == "paths-info" and revision:
            return self.paths_info(repo_type, repo_id, revision, body)
        if method == "POST" and action == "preupload" and revision:
            return self.preupload(repo_type, repo_id, revision, _json_body(body))
        if method == "POST" and action == "commit" and revision:
            return self.commit(repo_type, repo_id, revision, body, query)
        if method == "POST" and action == "branch" and revision:
            return self.create_branch(repo_type, repo_id, revision, _json_body(body) if body else {})
        if action in ("xet-write-token", "xet-read-token"):
            raise _HTTPError(501, None, "LocalHub does not model Xet storage: set HF_HUB_DISABLE_XET=1 "
                                        "(point_huggingface_hub_at does) so that huggingface_hub uploads over LFS")
        raise _HTTPError(404, None, "Sorry, we can't find the page you are looking for.")

    # -- lookups that raise the Hub's errors

    def find_repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self.hub._repo(repo_type, repo_id)
        if repo is None or not self.hub._can_read(self.user, repo):
            # The Hub answers 401 to an anonymous request for a repo it can't show (missing, private or
            # gated), 404 to an authenticated one; both carry X-Error-Code: RepoNotFound.
            if self.user is not None:
                raise _HTTPError(404, "RepoNotFound", "Repository not found")
            raise _HTTPError(401, "RepoNotFound", "Invalid username or password.")
        return repo

    def check_file_access(self, repo: _Repo) -> None:
        """A gated repo's files: its metadata is public, its files answer GatedRepo to anyone not granted
        access (401 anonymous, 403 authenticated), as the Hub does (hf_raise_for_status -> GatedRepoError)."""
        if not repo.gated or self.hub._can_write(self.user, repo.namespace) or self.user in repo.granted:
            return
        kind = REPO_TYPES[repo.repo_type][:-1]
        if self.user is None:
            raise _HTTPError(401, "GatedRepo", f"Access to {kind} {repo.repo_id} is restricted. You must have "
                                               "access to it and be authenticated to access it. Please log in.")
        raise _HTTPError(403, "GatedRepo", f"Access to {kind} {repo.repo_id} is restricted and you are not in "
                                           "the authorized list. Visit the repository page to ask for access.")

    def find_commit(self, repo: _Repo, revision: str) -> _Commit:
        commit = self.hub._resolve(repo, revision)
        if commit is None:
            raise _HTTPError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    def find_branch(self, repo: _Repo, branch: str) -> _Commit:
        """Commits go to branches only: a tag or a sha is no place to commit to (404, as for no revision)."""
        if branch not in repo.branches:
            raise _HTTPError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
        return self.find_commit(repo, branch)

    def writable_repo(self, repo_type: str, repo_id: str) -> _Repo:
        """The repo, if the token's user may write to it: 401/404 when it can't be seen, 403 when read-only."""
        repo = self.find_repo(repo_type, repo_id)
        if not self.hub._can_write(self.user, repo.namespace):
            if self.user is None:
                raise _HTTPError(401, "RepoNotFound", "Invalid username or password.")
            raise _HTTPError(403, None, f"You don't have the rights to write to {repo_id}")
        return repo

    # -- HfApi.model_info / dataset_info / space_info (repo_info, revision_exists, resolve_revision,
    #    snapshot_download's revision -> commit step)

    def repo_info(self, repo_type: str, repo_id: str, revision: str | None, query: dict) -> None:
        repo = self.find_repo(repo_type, repo_id)
        commit = self.find_commit(repo, revision if revision is not None else repo.default_branch)
        with_blobs = _flag(query, "blobs")
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling: dict = {"rfilename": path}
            if with_blobs:
                sibling.update(size=blob.size, blobId=blob.oid)
                if blob.sha256:
                    sibling["lfs"] = {"sha256": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
            siblings.append(sibling)
        with self.hub._lock:
            first = min(c.timestamp for c in repo.commits.values())
            used = sum(b.size for c in repo.commits.values() for b in c.files.values())
        namespace = repo_id.split("/")[0]
        info: dict = {
            "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24], "id": repo_id,
            "author": namespace, "sha": commit.sha, "lastModified": commit.date, "createdAt": _iso(first),
            "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "siblings": siblings, "usedStorage": used,
        }
        if repo_type == "model":
            info.update(modelId=repo_id, spaces=[])
            config = _json_file(commit, "config.json")
            if isinstance(config, dict):
                info["config"] = {k: config[k] for k in ("architectures", "model_type") if k in config}
        elif repo_type == "dataset":
            info.update(description="", citation="")
        if _flag(query, "securityStatus"):
            info["securityRepoStatus"] = {"scansDone": True, "filesWithIssues": []}
        expand = query.get("expand", []) + query.get("expand[]", [])
        if expand:
            info = {k: v for k, v in info.items() if k in ("_id", "id") or k in expand}
        self.respond_json(info)

    # -- HfApi.list_repo_tree (paginated like utils/_pagination.py expects), list_repo_files

    def tree(self, repo_type: str, repo_id: str, revision: str, path: str, query: dict) -> None:
        repo = self.find_repo(repo_type, repo_id)
        cursor = query.get("cursor", [None])[-1]
        offset = 0
        if cursor:  # pins the commit of the first page: a branch moving mid-listing doesn't mix trees
            try:
                state = json.loads(base64.urlsafe_b64decode(cursor.encode()))
                commit, offset = self.find_commit(repo, state["commit"]), int(state["offset"])
            except (ValueError, KeyError, TypeError):
                raise _HTTPError(400, None, "Invalid cursor") from None
        else:
            commit = self.find_commit(repo, revision)
        if path and path not in commit.trees:
            raise _HTTPError(404, "EntryNotFound", f"{path} does not exist on \"{revision}\"",
                             {"X-Repo-Commit": commit.sha})
        expand = _flag(query, "expand")
        entries = list(_walk(commit, path, _flag(query, "recursive")))
        size = min(self.hub.tree_page_size, _MAX_EXPAND_PAGE) if expand else self.hub.tree_page_size
        page = [_entry(repo, commit, p, expand) for p in entries[offset:offset + size]]
        headers = {}
        if offset + size < len(entries):
            state = json.dumps({"commit": commit.sha, "offset": offset + size}).encode()
            params = [(k, v) for k, values in query.items() if k != "cursor" for v in values]
            params.append(("cursor", base64.urlsafe_b64encode(state).decode()))
            raw_path = self.path.partition("?")[0]
            headers["Link"] = f'<{self.hub.url}{raw_path}?{urlencode(params)}>; rel="next"'
        self.respond_json(page, headers)

    # -- HfApi.get_paths_info

    def paths_info(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> None:
        repo = self.find_repo(repo_type, repo_id)
        commit = self.find_commit(repo, revision)
        form = parse_qs(body.decode(), keep_blank_values=True)
        expand = _flag(form, "expand")
        found = [p.strip("/") for p in form.get("paths", []) + form.get("paths[]", [])
                 if p.strip("/") in commit.files or p.strip("/") in commit.trees]
        self.respond_json([_entry(repo, commit, p, expand) for p in dict.fromkeys(found)])

    # -- HfApi.list_repo_refs

    def refs(self, repo_type: str, repo_id: str) -> None:
        repo = self.find_repo(repo_type, repo_id)
        with self.hub._lock:
            branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in repo.branches.items()]
            tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in repo.tags.items()]
        self.respond_json({"branches": branches, "converts": [], "tags": tags, "pullRequests": []})

    # -- HfApi.list_repo_commits

    def list_commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self.find_repo(repo_type, repo_id)
        commit = self.find_commit(repo, revision)
        items = []
        with self.hub._lock:
            while commit is not None:
                items.append({"id": commit.sha, "title": commit.message.splitlines()[0], "message": commit.message,
                              "authors": [{"user": commit.author, "avatar": ""}], "date": commit.date})
                commit = repo.commits.get(commit.parent) if commit.parent else None
        self.respond_json(items)

    # ------------------------------------------------------------ the write API

    # -- HfApi.whoami (_inner_whoami)

    def whoami(self) -> None:
        if self.user is None:
            raise _HTTPError(401, None, _BAD_CREDENTIALS)
        orgs = [{"type": "org", "name": org, "fullname": org, "roleInOrg": "write"}
                for org in self.hub.orgs.get(self.user, ())]
        self.respond_json({"type": "user", "id": hashlib.sha1(self.user.encode()).hexdigest()[:24],
                           "name": self.user, "fullname": self.user, "isPro": False, "orgs": orgs,
                           "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}}})

    # -- HfApi.create_repo

    def create_repo(self, payload: dict) -> None:
        if self.user is None:
            raise _HTTPError(401, None, "You must be authenticated to create a repository")
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise _HTTPError(400, None, f"Invalid repo type: {repo_type}")
        namespace = payload.get("organization") or self.user
        repo_id = f"{namespace}/{payload.get('name')}"
        if not _is_repo_id(repo_id):
            raise _HTTPError(400, None, f"Invalid repo name: {repo_id}")
        if not self.hub._can_write(self.user, namespace):
            raise _HTTPError(403, None, f'You don\'t have the rights to create a {repo_type} under the namespace '
                                        f'"{namespace}"')
        url = f"{self.hub.url}/{_URL_PREFIXES[repo_type]}{repo_id}"
        with self.hub._lock:
            if self.hub._repo(repo_type, repo_id) is not None:
                message = f"You already created this {repo_type} repo"
                headers = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": message}
                return self.respond(409, headers, json.dumps({"error": message, "url": url}).encode())
            private = payload.get("visibility", "private" if payload.get("private") else "public") != "public"
            repo = self.hub._repos.setdefault((repo_type, repo_id), _Repo(repo_type, repo_id, private=private))
            attributes = DEFAULT_GITATTRIBUTES.encode()
            self.hub._commit(repo, repo.default_branch, {".gitattributes": _make_blob(attributes, lfs=False)},
                             parent=None, message="initial commit",
                             author=(self.user, f"{self.user}@users.noreply.huggingface.co"))
        self.respond_json({"url": url, "name": repo_id,
                           "id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24]})

    # -- HfApi.create_branch

    def create_branch(self, repo_type: str, repo_id: str, branch: str, payload: dict) -> None:
        repo = self.writable_repo(repo_type, repo_id)
        with self.hub._lock:
            if branch in repo.branches or branch in repo.tags:
                raise _HTTPError(409, None, f"Reference already exists: {branch}")
            start = self.find_commit(repo, payload.get("startingPoint") or repo.default_branch)
            repo.branches[branch] = start.sha
        self.respond_json({})

    # -- HfApi._validate_yaml (create_commit with a README.md) and ModelCard.validate

    def validate_yaml(self, payload: dict) -> None:
        errors, warnings = _card_problems(str(payload.get("content", "")), payload.get("repoType") or "model")
        if errors and "text/plain" in (self.headers.get("Accept") or ""):
            text = "\n".join(f"- Error: {e}" for e in errors)
            return self.respond(400, {"Content-Type": "text/plain; charset=utf-8"}, text.encode())
        data = {"errors": [{"message": e} for e in errors], "warnings": [{"message": w} for w in warnings]}
        self.respond(400 if errors else 200, {"Content-Type": "application/json; charset=utf-8"},
                     json.dumps(data).encode())

    # -- _commit_api._fetch_upload_modes

    def preupload(self, repo_type: str, repo_id: str, revision: str, payload: dict) -> None:
        repo = self.writable_repo(repo_type, repo_id)
        head = self.find_branch(repo, revision)
        files = payload.get("files")
        if not isinstance(files, list):
            raise _HTTPError(400, None, "files must be an array")
        patterns = repo.lfs_patterns(head)
        answers = []
        for file in files:
            path, size = str(file.get("path", "")), int(file.get("size") or 0)
            problem = _check_path(path)
            if problem:
                raise _HTTPError(422, None, problem)
            sample = base64.b64decode(file.get("sample") or "")
            answer = {"path": path, "uploadMode": "lfs" if _is_lfs(path, size, sample, patterns) else "regular",
                      "shouldIgnore": False}
            if path in head.files:
                answer["oid"] = head.files[path].remote_oid
            answers.append(answer)
        self.respond_json({"files": answers, "commitOid": head.sha})

    # -- lfs.post_lfs_batch_info and lfs_upload's verify step

    def lfs_batch(self, repo_type: str, repo_id: str, payload: dict) -> None:
        repo = self.writable_repo(repo_type, repo_id)
        if payload.get("operation") != "upload":
            raise _HTTPError(400, None, "LocalHub's LFS batch API takes uploads only (downloads go through resolve)")
        verify = f"{self.hub.url}/{_URL_PREFIXES[repo_type]}{repo_id}.git/info/lfs/objects/verify"
        objects = []
        for item in payload.get("objects") or []:
            oid, size = item.get("oid"), item.get("size")
            if not (isinstance(oid, str) and _SHA256.fullmatch(oid) and isinstance(size, int) and size >= 0):
                objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "Invalid object: oid must be a sha256"}})
                continue
            answer: dict = {"oid": oid, "size": size, "authenticated": True}
            with self.hub._lock:
                present = oid in repo.lfs
            if not present:  # no "actions": _upload_lfs_files skips what the storage already holds
                upload = (f"{self.hub.cdn_url}/upload/{REPO_TYPES[repo_type]}/{repo_id}/{oid}"
                          f"?{urlencode({'size': size})}")
                answer["actions"] = {"upload": {"href": upload}, "verify": {"href": verify}}
            objects.append(answer)
        self.respond(200, {"Content-Type": "application/vnd.git-lfs+json"},
                     json.dumps({"transfer": "basic", "objects": objects}).encode())

    def lfs_verify(self, repo_type: str, repo_id: str, payload: dict) -> None:
        repo = self.writable_repo(repo_type, repo_id)
        oid = payload.get("oid")
        with self.hub._lock:
            blob = self.hub._lfs.get(oid) if oid in repo.lfs else None
        if blob is None or blob.size != payload.get("size"):
            raise _HTTPError(404, None, f"Object {oid} was not uploaded")
        self.respond_json({"success": True})

    # -- _commit_api._send_commit

    def commit(self, repo_type: str, repo_id: str, branch: str, body: bytes, query: dict) -> None:
        repo = self.writable_repo(repo_type, repo_id)
        if _flag(query, "create_pr"):
            raise _HTTPError(501, None, "LocalHub does not model pull requests")
        try:
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        except ValueError:
            raise _HTTPError(400, None, "The body must be NDJSON") from None
        header = next((line.get("value") or {} for line in lines if line.get("key") == "header"), None)
        if not header or not header.get("summary"):
            raise _HTTPError(400, None, "Add a line with the key `header` and a `summary`")
        operations = [line for line in lines if line.get("key") != "header"]
        if not operations:
            raise _HTTPError(400, None, "Add a line with the key `lfsFile`, `file` or `deletedFile`")
        with self.hub._lock:
            head = self.find_branch(repo, branch)
            parent = str(header.get("parentCommit") or "").lower()
            if parent and not (len(parent) >= 5 and head.sha.startswith(parent)):
                raise _HTTPError(412, None, "The branch was updated since you opened this page. "
                                            "Please refresh and try again.")
            files = self.apply_operations(repo, head, operations)
            readme = next((op for op in operations if op.get("key") in ("file", "lfsFile")
                           and (op.get("value") or {}).get("path") == "README.md"), None)
            errors, _ = _card_problems(files["README.md"].data.decode(errors="replace"), repo_type) \
                if readme is not None else ([], [])
            if errors:
                raise _HTTPError(400, None, "Invalid metadata in README.md.\n" + "\n".join(f"- {e}" for e in errors))
            description = header.get("description") or ""
            message = header["summary"] + (f"\n\n{description}" if description else "")
            try:
                commit = self.hub._commit(repo, branch, files, parent=head, message=message,
                                          author=(self.user, f"{self.user}@users.noreply.huggingface.co"))
            except ValueError as exc:  # a path that is both a file and a directory
                raise _HTTPError(400, None, str(exc)) from None
        url = f"{self.hub.url}/{_URL_PREFIXES[repo_type]}{repo_id}/commit/{commit.sha}"
        self.respond_json({"success": True, "commitOid": commit.sha, "commitUrl": url, "hookOutput": "",
                           "pullRequestUrl": None})

    def apply_operations(self, repo: _Repo, head: _Commit, operations: list[dict]) -> dict[str, _Blob]:
        """The head's files with the commit's lines applied in order (_prepare_commit_payload's keys)."""
        files = dict(head.files)
        for operation in operations:
            key, value = operation.get("key"), operation.get("value") or {}
            path = str(value.get("path", ""))
            problem = _check_path(path.rstrip("/") if key == "deletedFolder" else path)
            if problem:
                raise _HTTPError(422, None, problem)
            if key == "file":
                content = value.get("content") or ""
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                files[path] = _make_blob(data, lfs=False)
            elif key == "lfsFile":
                oid = value.get("oid")
                blob = self.hub._lfs.get(oid) if oid in repo.lfs else None
                if blob is None:
                    raise _HTTPError(400, None, f"LFS object {oid} for {path} is not in this repo's storage: "
                                                "upload it through the LFS batch API first")
                files[path] = blob
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise _HTTPError(404, "EntryNotFound", "A file with this name doesn't exist")
            elif key == "deletedFolder":
                inside = [p for p in files if p.startswith(path.rstrip("/") + "/")]
                if not inside:
                    raise _HTTPError(404, "EntryNotFound", "A folder with this name doesn't exist")
                for p in inside:
                    del files[p]
            else:
                raise _HTTPError(400, None, f"Unknown key {key!r}: use `lfsFile`, `file`, `deletedFile` "
                                            "or `deletedFolder`")
        return files

    # -- hf_hub_download: get_hf_file_metadata (HEAD) and http_get (GET)

    def resolve(self, repo_type: str, repo_id: str, revision: str, path: str, *, raw: bool) -> None:
        repo = self.find_repo(repo_type, repo_id)
        self.check_file_access(repo)
        commit = self.find_commit(repo, revision)
        blob = commit.files.get(path)
        if blob is None:
            raise _HTTPError(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit.sha})
        if raw:  # the git content: an LFS file's pointer
            self.send_bytes(blob, blob.git_bytes, {"ETag": f'"{blob.oid}"', "X-Repo-Commit": commit.sha,
                                                   **_content_headers(path)}, interrupt_key=f"raw:{blob.oid}")
        elif blob.sha256:
            self.redirect_to_cdn(blob, path, commit)
        else:
            # The Hub sends plain files through a relative 307 to its resolve cache, keyed by commit; the
            # metadata is on the final answer, which huggingface_hub reaches by following same-host redirects.
            etag = urlencode({"etag": f'"{blob.oid}"'})
            location = f"/api/resolve-cache/{REPO_TYPES[repo_type]}/{repo_id}/{commit.sha}/{quote(path)}?{etag}"
            self.respond(307, {"Location": location, "Content-Type": "text/plain; charset=utf-8"},
                         f"Temporary Redirect. Redirecting to {location}".encode())

    def redirect_to_cdn(self, blob: _Blob, path: str, commit: _Commit) -> None:
        """An LFS file: 302 off the Hub, with the file's metadata on this answer (get_hf_file_metadata reads
        X-Linked-Etag / X-Linked-Size here, since it doesn't follow a redirect to another origin)."""
        disposition = _content_headers(path)["Content-Disposition"]
        location = (f"{self.hub.cdn_url}/repos/{blob.sha256[:2]}/{blob.sha256[2:4]}/{blob.sha256}"
                    f"?{urlencode({'response-content-disposition': disposition})}")
        self.respond(302, {"Location": location, "X-Repo-Commit": commit.sha,
                           "X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size),
                           "Accept-Ranges": "bytes", "Content-Type": "text/plain; charset=utf-8"},
                     f"Found. Redirecting to {location}".encode())

    def resolve_cache(self, repo_type: str, repo_id: str, commit_sha: str, path: str) -> None:
        repo = self.find_repo(repo_type, repo_id)
        self.check_file_access(repo)
        commit = self.find_commit(repo, commit_sha)
        blob = commit.files.get(path)
        if blob is None:
            raise _HTTPError(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit.sha})
        if blob.sha256:
            return self.redirect_to_cdn(blob, path, commit)
        self.send_bytes(blob, blob.data, {"ETag": f'"{blob.oid}"', "X-Repo-Commit": commit.sha,
                                          **_content_headers(path)}, interrupt_key=blob.oid)


class _CdnHandler(_Handler):
    """The LFS storage the Hub redirects to: bytes by sha256, no Hub headers (like a CDN); and the presigned
    upload URLs the LFS batch API hands out (like S3: no token, the URL is the permission)."""

    role = "cdn"

    def route(self, segments: list[str], query: dict[str, list[str]], body: bytes) -> None:
        if self.command in ("GET", "HEAD") and len(segments) == 4 and segments[0] == "repos":
            with self.hub._lock:
                blob = self.hub._lfs.get(segments[3])
            if blob is not None:
                disposition = query.get("response-content-disposition", [None])[-1]
                headers = {"Content-Type": "application/octet-stream", "ETag": f'"{blob.sha256}"',
                           **({"Content-Disposition": disposition} if disposition else {})}
                return self.send_bytes(blob, blob.data, headers, interrupt_key=blob.sha256)
        if self.command == "PUT" and len(segments) == 5 and segments[0] == "upload" and segments[1] in _PLURALS:
            return self.upload(_PLURALS[segments[1]], "/".join(segments[2:4]), segments[4], query, body)
        self.respond(404, {"Content-Type": "text/plain"}, b"NoSuchKey")

    def upload(self, repo_type: str, repo_id: str, oid: str, query: dict[str, list[str]], body: bytes) -> None:
        """lfs._upload_single_part's PUT: the bytes must be the object the batch answer was for."""
        repo = self.hub._repo(repo_type, repo_id)
        if repo is None:
            raise _HTTPError(404, None, "NoSuchBucket")
        if hashlib.sha256(body).hexdigest() != oid or str(len(body)) != query.get("size", [str(len(body))])[-1]:
            raise _HTTPError(400, None, "BadDigest: the content does not match the oid and size it was sent for")
        blob = _make_blob(body, lfs=True)
        with self.hub._lock:
            self.hub._lfs[oid] = blob
            repo.lfs.add(oid)
            self.hub.lfs_uploads.append(oid)
        self.respond(200, {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def send_error_json(self, status, code, message, headers) -> None:
        self.respond(status, {"Content-Type": "text/plain"}, message.encode())


def _json_body(body: bytes) -> dict:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise _HTTPError(400, None, "The body must be JSON") from None
    if not isinstance(data, dict):
        raise _HTTPError(400, None, "The body must be a JSON object")
    return data


def _card_problems(content: str, repo_type: str) -> tuple[list[str], list[str]]:
    """The errors and warnings the Hub's validate-yaml gives a card, for the rules modelled (module docstring).
    The front matter is found as huggingface_hub.repocard finds it."""
    import yaml

    match = _YAML_BLOCK.search(content)
    if match is None:
        return [], ["Empty or missing yaml metadata in repo card "
                    "(https://huggingface.co/docs/hub/model-cards#model-card-metadata)"]
    try:
        metadata = yaml.safe_load(match.group(2)) or {}
    except yaml.YAMLError as exc:
        return [f"Invalid YAML in the card's metadata: {str(exc).splitlines()[0]}"], []
    if not isinstance(metadata, dict):
        return ["The card's metadata must be a YAML mapping"], []
    errors = []
    licenses = metadata.get("license")
    for value in (licenses if isinstance(licenses, list) else [] if licenses is None else [licenses]):
        if value not in HUB_LICENSES:
            errors.append(f'"license" must be one of [{", ".join(HUB_LICENSES)}, array]')
            break
    if repo_type == "model":
        bases = metadata.get("base_model")
        for value in (bases if isinstance(bases, list) else [] if bases is None else [bases]):
            if not (isinstance(value, str) and _is_repo_id(value)):
                errors.append(f'"base_model" with value "{value}" is not valid. '
                              'Use a model id from https://hf.co/models.')
        relation = metadata.get("base_model_relation")
        if relation is not None and relation not in BASE_MODEL_RELATIONS:
            errors.append(f'"base_model_relation" must be one of [{", ".join(BASE_MODEL_RELATIONS)}]')
    return errors, []


def _walk(commit: _Commit, directory: str, recursive: bool):
    """Paths under ``directory`` in git order; a directory's content right after it when recursive."""
    for name, is_dir in commit.children.get(directory, []):
        path = f"{directory}/{name}" if directory else name
        yield path
        if is_dir and recursive:
            yield from _walk(commit, path, True)


def _entry(repo: _Repo, commit: _Commit, path: str, expand: bool) -> dict:
    """One tree entry, as /tree and /paths-info give it (RepoFile / RepoFolder parse these keys)."""
    blob = commit.files.get(path)
    if blob is None:
        entry: dict = {"type": "directory", "oid": commit.trees[path], "size": 0, "path": path}
    else:
        entry = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
        if blob.sha256:
            entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
    if expand:
        last = commit  # the newest commit of the first-parent history that changed this path
        oid = commit.oid_of(path)
        while last.parent is not None and repo.commits[last.parent].oid_of(path) == oid:
            last = repo.commits[last.parent]
        entry["lastCommit"] = {"id": last.sha, "title": last.message.splitlines()[0], "date": last.date}
        if blob is not None:
            entry["securityFileStatus"] = {"status": "safe", "avScan": {"virusFound": False, "virusNames": None},
                                           "pickleImportScan": None}
    return entry


def _json_file(commit: _Commit, path: str):
    blob = commit.files.get(path)
    try:
        return json.loads(blob.data) if blob is not None else None
    except ValueError:
        return None


# ---------------------------------------------------------------- pytest


@pytest.fixture
def local_hub():
    """A started ``LocalHub``, closed after the test. Point huggingface_hub at it with ``endpoint=
    local_hub.url`` or ``point_huggingface_hub_at`` (see the module docstring). It takes every token as the
    user ``me``; set ``local_hub.tokens = {"hf_...": "me"}`` to have other tokens refused."""
    hub = LocalHub()
    try:
        yield hub
    finally:
        hub.close()


def point_huggingface_hub_at(hub: LocalHub, monkeypatch: pytest.MonkeyPatch, hf_home: str | Path) -> Path:
    """Make the already imported huggingface_hub use ``hub`` and cache under ``hf_home`` for this test, as
    if it had been imported with ``hub.env(hf_home)``; returns the hub cache folder (``hf_home/hub``)."""
    from huggingface_hub import constants, hf_api

    hf_home = Path(hf_home)
    for name, value in hub.env(hf_home).items():  # for child processes
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    patches = {
        "ENDPOINT": hub.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HUGGINGFACE_HUB_CACHE": str(hf_home / "hub"),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(hf_home / ".agent_harnesses.json"),  # utils._detect_agent caches it there
    }
    for name, value in patches.items():
        monkeypatch.setattr(constants, name, value)
    # The module-level HfApi behind huggingface_hub.model_info, list_repo_tree, ... kept its endpoint.
    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)
    return hf_home / "hub"

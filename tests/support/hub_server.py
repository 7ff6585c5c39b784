"""A local model of the Hugging Face Hub's READ HTTP API, for the real ``huggingface_hub`` client (2.4.0).

Written from huggingface_hub's own source (file_download.py, _snapshot_download.py, hf_api.py,
utils/_http.py, utils/_pagination.py), not from the Hub's: every endpoint below names the client function
it serves, and answers with the status codes and headers that function reads. Stdlib only.

    hub = LocalHub()                     # started: hub.url == "http://127.0.0.1:PORT"
    sha = hub.add_repo("org/model", {"config.json": b"{}", "model.safetensors": weights})
    ...
    hub.close()

or, in a test, the ``local_hub`` fixture (function scope, always closed).

What is modelled
----------------
* Repositories of type model, dataset and space, kept in memory, each a git-like history: ``add_repo``
  makes a commit whose tree is exactly the files given (not merged with the previous commit), with real
  git object ids: blob sha1 = sha1(b"blob <len>\\0" + bytes), tree and commit ids hashed like git's (fixed
  author, dates 2024-01-01 + one minute per commit), so the same calls always give the same shas. The
  branch moves to the new commit; old commits stay reachable by their full sha.
* LFS, as a repo created on the Hub marks it: files over 10 MiB, and names matching the Hub's default
  ``.gitattributes`` (``*.safetensors``, ``*.parquet``, ``*.bin``, ...; see ``LFS_PATTERNS``). In git such
  a file is its pointer (oid = sha1 of the pointer), its ``lfs.oid`` is the sha256 of the content.
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
  unknown repo -> 401 (no Authorization header) or 404, ``RepoNotFound`` -> RepositoryNotFoundError;
  unknown revision -> 404 ``RevisionNotFound`` -> RevisionNotFoundError; unknown file or tree path -> 404
  ``EntryNotFound`` (with ``X-Repo-Commit`` on resolve, which hf_hub_download caches in ``.no_exist``)
  -> RemoteEntryNotFoundError (an EntryNotFoundError). Revisions are branch names, tags (``tag()``) and
  full 40-hex commit shas of that repo; names arrive URL-encoded (``refs%2Fconvert%2Fparquet``) and are
  decoded per path segment, so an unknown one is a clean RevisionNotFound.

Pointing huggingface_hub at it
------------------------------
huggingface_hub reads its environment once, at import (constants.py): ``HF_ENDPOINT`` -> ``ENDPOINT`` and
``HUGGINGFACE_CO_URL_TEMPLATE``, ``HF_HUB_OFFLINE`` (tests/conftest.py sets it to 1!), ``HF_HOME`` ->
``HF_HUB_CACHE``, ``HF_TOKEN_PATH``; and hf_api.py builds a module-level ``api = HfApi()`` whose bound
methods are the top-level ``huggingface_hub.model_info``, ``list_repo_tree``, ... with the endpoint of that
moment. Within pytest the library is already imported, so setting env vars is too late. Three ways work:

1. Pass ``endpoint=hub.url`` (and ``cache_dir=``) to every call: ``HfApi(endpoint=hub.url)``,
   ``snapshot_download(..., endpoint=hub.url, cache_dir=...)``, ``hf_hub_download(..., endpoint=...)``.
   Offline mode must still be off: ``monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE",
   False)``, or every request raises OfflineModeIsEnabled.
2. ``point_huggingface_hub_at(hub, monkeypatch, hf_home)``: patches the constants above (ENDPOINT,
   HUGGINGFACE_CO_URL_TEMPLATE, HF_HUB_OFFLINE, HF_HOME/HF_HUB_CACHE/HF_ASSETS_CACHE/HF_XET_CACHE,
   HF_TOKEN_PATH, HF_HUB_DISABLE_XET) and ``huggingface_hub.hf_api.api.endpoint``, removes HF_TOKEN from
   the environment, and sets the matching env vars for child processes. Then code that passes no endpoint
   (``HfApi().model_info(...)``, ``snapshot_download(repo_id)``, as packager does) reaches this hub and
   caches under ``hf_home/hub``. Not covered: ``scan_cache_dir()`` without an argument (utils/_cache_manager
   imported HF_HUB_CACHE by name), and ``HF_HUB_DISABLE_PROGRESS_BARS`` (same in utils/tqdm).
3. A child process: ``env={**os.environ, **hub.env(hf_home)}`` (HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE=0,
   HF_HUB_DISABLE_XET=1, no HF_TOKEN) works as is, since it imports huggingface_hub afresh.

Left out, knowingly: authentication, private and gated repos (every repo is public, ``gated: false``; a
token is accepted and ignored, except that it turns a missing repo's 401 into 404); Xet (no ``X-Xet-*``
headers or ``xetHash``, so the client downloads over plain HTTP; set HF_HUB_DISABLE_XET=1 anyway); gzip
on text files; short commit shas; repo renames/redirects; ``cardData`` parsed from the README, model
``config`` beyond architectures/model_type, download counts, likes; commits listing, ``/api/models`` search,
every write endpoint (create_repo, preupload, commit: see FakeHub in tests/publish for those); 400 for an
unknown ``expand`` property (unknown ones are just left out); the CDN's signed, expiring URLs (the
Location has no signature).
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

__all__ = ["LFS_PATTERNS", "LFS_THRESHOLD", "LocalHub", "local_hub", "point_huggingface_hub_at"]

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

REPO_TYPES = {"model": "models", "dataset": "datasets", "space": "spaces"}
_PLURALS = {plural: singular for singular, plural in REPO_TYPES.items()}
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_SHA = re.compile(r"[0-9a-f]{40}")
_EPOCH = 1704067200  # 2024-01-01T00:00:00Z: commit n of a repo is dated EPOCH + 60 n
_MAX_EXPAND_PAGE = 50  # the Hub's page size for tree listings with expand=true


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


def _git_sha1(kind: str, body: bytes) -> str:
    return hashlib.sha1(f"{kind} {len(body)}\0".encode() + body).hexdigest()


def _is_lfs(path: str, size: int) -> bool:
    name = path.rsplit("/", 1)[-1]
    return (size > LFS_THRESHOLD or any(fnmatch.fnmatchcase(name, p) for p in LFS_PATTERNS)
            or path.startswith("saved_model/") or "/saved_model/" in path)


def _make_blob(path: str, data: bytes) -> _Blob:
    if not _is_lfs(path, len(data)):
        return _Blob(data=data, oid=_git_sha1("blob", data))
    sha256 = hashlib.sha256(data).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
    return _Blob(data=data, oid=_git_sha1("blob", pointer), sha256=sha256, pointer=pointer)


@dataclass
class _Commit:
    sha: str
    parent: str | None
    files: dict[str, _Blob]
    trees: dict[str, str]  # directory ("" = root) -> git tree sha
    children: dict[str, list[tuple[str, bool]]]  # directory -> [(name, is_dir)] in git order
    timestamp: int
    message: str

    @property
    def date(self) -> str:
        return _iso(self.timestamp)

    def oid_of(self, path: str) -> str | None:
        blob = self.files.get(path)
        return blob.oid if blob is not None else self.trees.get(path)


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
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    default_branch: str = "main"

    def resolve(self, revision: str) -> _Commit | None:
        sha = self.branches.get(revision) or self.tags.get(revision)
        if sha is None and _SHA.fullmatch(revision) and revision in self.commits:
            sha = revision
        return self.commits.get(sha) if sha else None


# ---------------------------------------------------------------- the hub


@dataclass
class Exchange:
    """One request as the server saw it (``LocalHub.exchanges``)."""

    server: str  # "hub" or "cdn"
    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]  # names lower-cased
    status: int | None = None


class LocalHub:
    """The Hub's read API on 127.0.0.1 (see the module docstring). Started on construction; ``close()``."""

    def __init__(self, *, tree_page_size: int = 50):
        self.tree_page_size = tree_page_size
        self.requests: list[tuple[str, str]] = []
        """(method, path without query) of every request to the hub (not the CDN), in arrival order."""
        self.cdn_requests: list[tuple[str, str]] = []
        """Same, for the LFS "CDN" (another port: another origin for huggingface_hub)."""
        self.exchanges: list[Exchange] = []
        """Every request to either server, with its headers and the status answered."""
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lfs: dict[str, _Blob] = {}  # sha256 -> blob, what the CDN serves
        self._interrupts: dict[str, int] = {}  # blob oid or sha256 -> bytes to send before dropping
        self._lock = threading.RLock()
        self._connections: set[socket.socket] = set()
        self._hub = self._serve("hub")
        self._cdn = self._serve("cdn")
        self.url = f"http://127.0.0.1:{self._hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._cdn.server_address[1]}"

    # -- content

    def add_repo(self, repo_id: str, files: dict[str, bytes | str] | Path, *, repo_type: str = "model",
                 branch: str = "main", message: str | None = None) -> str:
        """Commit ``files`` (path -> content, or a directory to read) as the whole tree of a new commit on
        ``branch`` (created if new, from the default branch), and return the commit's 40-hex sha."""
        if repo_type not in REPO_TYPES:
            raise ValueError(f"repo_type must be one of {sorted(REPO_TYPES)}, not {repo_type!r}")
        if not _REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
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
            parts = path.split("/")
            if path.startswith("/") or any(part in ("", ".", "..") for part in parts) or parts[0] == ".git":
                raise ValueError(f"not a path inside a repo: {path!r}")
        blobs = {path: _make_blob(path, data) for path, data in sorted(contents.items())}
        trees, children = _build_trees(blobs)
        with self._lock:
            repo = self._repos.setdefault((repo_type, repo_id), _Repo(repo_type, repo_id))
            parent = repo.branches.get(branch) or repo.branches.get(repo.default_branch)
            timestamp = _EPOCH + 60 * len(repo.commits)
            message = message or f"Commit {len(repo.commits) + 1} on {branch}"
            author = f"LocalHub <localhub@127.0.0.1> {timestamp} +0000"
            body = (f"tree {trees['']}\n" + (f"parent {parent}\n" if parent else "")
                    + f"author {author}\ncommitter {author}\n\n{message}\n").encode()
            sha = _git_sha1("commit", body)
            repo.commits[sha] = _Commit(sha, parent, blobs, trees, children, timestamp, message)
            repo.branches[branch] = sha
            self._lfs.update({b.sha256: b for b in blobs.values() if b.sha256})
        return sha

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

    def _handle(self) -> None:
        raw_path, _, query = self.path.partition("?")
        self.exchange = Exchange(self.role, self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        self.hub.exchanges.append(self.exchange)
        (self.hub.requests if self.role == "hub" else self.hub.cdn_requests).append((self.command, raw_path))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        # Decode each segment on its own: a revision sent as refs%2Fpr%2F1 stays one segment.
        segments = [unquote(s) for s in raw_path.split("/")[1:]]
        try:
            self.route(segments, parse_qs(query, keep_blank_values=True), body)
        except _HTTPError as e:
            self.send_error_json(e.status, e.code, e.message, e.headers)

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
        self.respond(status, {"Content-Type": "application/json; charset=utf-8", **extra,
                              "X-Error-Message": message, **headers}, json.dumps({"error": message}).encode())

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
        elif segments[:1] == ["api"] and len(segments) >= 4 and segments[1] in _PLURALS:
            repo_type, repo_id, rest = _PLURALS[segments[1]], "/".join(segments[2:4]), segments[4:]
            if method == "GET" and not rest:
                return self.repo_info(repo_type, repo_id, None, query)
            if method == "GET" and rest[0] == "revision" and len(rest) >= 2:
                return self.repo_info(repo_type, repo_id, "/".join(rest[1:]), query)
            if method == "GET" and rest[0] == "tree" and len(rest) >= 2:
                return self.tree(repo_type, repo_id, rest[1], "/".join(rest[2:]).strip("/"), query)
            if method == "GET" and rest == ["refs"]:
                return self.refs(repo_type, repo_id)
            if method == "POST" and rest[0] == "paths-info" and len(rest) >= 2:
                return self.paths_info(repo_type, repo_id, "/".join(rest[1:]), body)
        elif method in ("GET", "HEAD"):
            repo_type = "model"
            if segments and segments[0] in ("datasets", "spaces"):
                repo_type, segments = _PLURALS[segments[0]], segments[1:]
            if len(segments) >= 5 and segments[2] in ("resolve", "raw"):
                return self.resolve(repo_type, "/".join(segments[:2]), segments[3], "/".join(segments[4:]),
                                    raw=segments[2] == "raw")
        raise _HTTPError(404, None, "Sorry, we can't find the page you are looking for.")

    # -- lookups that raise the Hub's errors

    def find_repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self.hub._repo(repo_type, repo_id)
        if repo is None:
            # The Hub answers 401 to an anonymous request for a repo it can't show (missing, private or
            # gated), 404 to an authenticated one; both carry X-Error-Code: RepoNotFound.
            if self.headers.get("Authorization"):
                raise _HTTPError(404, "RepoNotFound", "Repository not found")
            raise _HTTPError(401, "RepoNotFound", "Invalid username or password.")
        return repo

    def find_commit(self, repo: _Repo, revision: str) -> _Commit:
        commit = self.hub._resolve(repo, revision)
        if commit is None:
            raise _HTTPError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

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
            "private": False, "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
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

    # -- hf_hub_download: get_hf_file_metadata (HEAD) and http_get (GET)

    def resolve(self, repo_type: str, repo_id: str, revision: str, path: str, *, raw: bool) -> None:
        repo = self.find_repo(repo_type, repo_id)
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
        commit = self.find_commit(repo, commit_sha)
        blob = commit.files.get(path)
        if blob is None:
            raise _HTTPError(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit.sha})
        if blob.sha256:
            return self.redirect_to_cdn(blob, path, commit)
        self.send_bytes(blob, blob.data, {"ETag": f'"{blob.oid}"', "X-Repo-Commit": commit.sha,
                                          **_content_headers(path)}, interrupt_key=blob.oid)


class _CdnHandler(_Handler):
    """The LFS storage the Hub redirects to: bytes by sha256, no Hub headers (like a CDN)."""

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
        self.respond(404, {"Content-Type": "text/plain"}, b"NoSuchKey")

    def send_error_json(self, status, code, message, headers) -> None:
        self.respond(status, {"Content-Type": "text/plain"}, message.encode())


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
    local_hub.url`` or ``point_huggingface_hub_at`` (see the module docstring)."""
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
    }
    for name, value in patches.items():
        monkeypatch.setattr(constants, name, value)
    # The module-level HfApi behind huggingface_hub.model_info, list_repo_tree, ... kept its endpoint.
    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)
    return hf_home / "hub"

"""Push a run to the Hugging Face Hub: one repo per kind (merged, adapter, GGUF), idempotent, with cards.

The commit plan (every file with its size and sha256, the card, the message) is computed from the run
alone; ``--dry-run`` writes it without network. A real push lists the repo's files and uploads only those
that differ (LFS sha256, or the git blob id for small files), deletes files the run no longer has, and
makes no commit when nothing changed. The token comes from ``HF_TOKEN`` or huggingface_hub's login and is
never written anywhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from packager.errors import BadInputError, IntegrityError, StageError, first_line
from packager.models.stop_tokens import generation_stop_ids
from packager.publish.card import render_model_card
from packager.publish.files import published_files
from packager.run.artifacts import merged_model_dir
from packager.run.directory import Run
from packager.run.lineage import lineage_digest
from packager.run.settings import base_hub_id, recorded_config
from packager.run.verify import verify_run
from packager.serve.ollama import modelfile_parameters, ollama_template
from packager.serve.tool_parity import run_tool_conversations


KINDS = ("merged", "adapter", "gguf")
SMALL_FILE = 10 << 20  # smaller files are plain git blobs on the Hub; larger ones LFS/Xet with a sha256
HUB_REPO_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}"


@dataclass
class PlannedFile:
    path_in_repo: str
    size: int
    sha256: str
    local: Path | None = None  # None: content is in ``content``
    content: bytes | None = None

    def git_blob_id(self) -> str:
        data = self.content if self.content is not None else self.local.read_bytes()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class CommitPlan:
    repo_id: str
    what: str
    revision: str | None
    private: bool
    message: str
    files: list[PlannedFile] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"repo_id": self.repo_id, "what": self.what, "revision": self.revision or "main",
                "private": self.private, "commit_message": self.message,
                "files": [{"path": f.path_in_repo, "size": f.size, "sha256": f.sha256} for f in self.files],
                "card": next((f.content.decode() for f in self.files if f.path_in_repo == "README.md"), None)}


def _text_file(path_in_repo: str, text: str) -> PlannedFile:
    data = text.encode()
    return PlannedFile(path_in_repo, len(data), hashlib.sha256(data).hexdigest(), content=data)


def plan_commit(run, cfg, *, what: str, repo_id: str, revision: str | None = None,
                private: bool = True) -> CommitPlan:
    """What pushing ``what`` makes the repo hold: recorded files, a card, and Ollama's template/params for GGUF."""
    import re

    if not re.fullmatch(HUB_REPO_ID, repo_id):
        raise BadInputError(f"--repo-id {repo_id!r} is not a Hub repo id like your-org/model-name")
    hub_id, _ = base_hub_id(run)
    if hub_id is None:
        raise BadInputError("the base model is a local directory with no Hub id, and a model card's base_model "
                            "must be one (the Hub rejects local paths)",
                            hint="set base.hub_id in packager.yaml to the id the base came from")
    if not re.fullmatch(HUB_REPO_ID, hub_id):  # the Hub's validate-yaml refuses the card, after create_repo
        raise BadInputError(f"base.hub_id {hub_id!r} is not a Hub id like org/model, and a model card's "
                            "base_model must be one (the Hub rejects the card)",
                            hint="set base.hub_id in packager.yaml to the id the base came from")
    files = [PlannedFile(name, rec.size, rec.sha256, local=run.resolve(rec.path))
             for name, rec in published_files(run, what) if name != "README.md"]
    listed = [{"path": f.path_in_repo, "size": f.size, "sha256": f.sha256} for f in files]
    stop_ids = generation_stop_ids(merged_model_dir(run))
    card = render_model_card(run, kind=what, files=listed, license_cfg=cfg.export, stop_ids=stop_ids)
    files.append(_text_file("README.md", card))
    if what == "gguf":
        files += _ollama_files(run, cfg)
    digest = lineage_digest(run.manifest)
    message = f"packager: {what} of run {run.manifest.run} (manifest lineage sha256:{digest[:16]})"
    return CommitPlan(repo_id, what, revision, private, message, sorted(files, key=lambda f: f.path_in_repo))


def _ollama_files(run, cfg) -> list[PlannedFile]:
    """Ollama's Hub integration reads ``template`` (Go) and ``params`` (JSON) beside the GGUF files: the same
    TEMPLATE, proven against the Jinja template, and PARAMETERs the Modelfile gets."""
    model_dir = merged_model_dir(run)
    go_template, _ = ollama_template(model_dir, cfg.containers.ollama,
                                     tool_rows=run_tool_conversations(run.path / "data" / "train.jsonl"))
    params = modelfile_parameters(cfg, model_dir)
    files = [_text_file("template", go_template), _text_file("params", json.dumps(
        {"stop": params["stop"], "num_ctx": params["num_ctx"], **dict(params["sampling"])}, indent=2) + "\n")]
    if cfg.containers.ollama.system:
        files.append(_text_file("system", cfg.containers.ollama.system))
    return files


# ---------------------------------------------------------------- pushing

def default_client():
    """huggingface_hub's HfApi with the user's token, at the endpoint huggingface_hub is configured for
    (``HF_ENDPOINT``: the Hub, a mirror, or a local Hub in the tests)."""
    from huggingface_hub import HfApi, get_token

    token = get_token()  # HF_TOKEN, or the token `hf auth login` stored
    if not token:
        raise BadInputError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login`",
                            hint="the token is read from there at push time and never written by packager")
    return HfApi(token=token)


def _changes(plan: CommitPlan, remote: dict) -> tuple[list[PlannedFile], list[str]]:
    """Files whose content differs from the repo's, and repo files the plan no longer has."""
    changed = []
    for f in plan.files:
        entry = remote.get(f.path_in_repo)
        lfs = getattr(entry, "lfs", None) if entry is not None else None
        lfs_sha = getattr(lfs, "sha256", None) or (lfs.get("sha256") if isinstance(lfs, dict) else None)
        same = entry is not None and (lfs_sha == f.sha256 if lfs_sha else
                                      f.size < SMALL_FILE and entry.blob_id == f.git_blob_id())
        if not same:
            changed.append(f)
    keep = {f.path_in_repo for f in plan.files} | {".gitattributes"}
    stale = sorted(path for path in remote if path not in keep)
    return changed, stale


@dataclass
class HubResult:
    plan: CommitPlan
    commit: str | None
    url: str | None
    uploaded: list[str]
    deleted: list[str]
    dry_run_file: Path | None = None

    def summary(self) -> str:
        if self.dry_run_file:
            files = self.plan.files
            return (f"dry run: {len(files)} files, {sum(f.size for f in files):,} bytes -> {self.plan.repo_id}; "
                    f"plan and card: {self.dry_run_file}")
        if self.commit:
            return f"pushed {len(self.uploaded)} file(s), deleted {len(self.deleted)}: {self.url}"
        return f"{self.plan.repo_id} already holds these files: no commit"


def push_hub(run_dir: Path | str, *, repo_id: str, what: str = "merged", private: bool = True,
             revision: str | None = None, dry_run: bool = False,
             client_factory: Callable[[], object] = default_client) -> HubResult:
    """``packager push hub RUN --repo-id ID``. ``client_factory`` returns an HfApi (tests pass their own).

    The repo is compared at its head commit and the commit names that head as its parent
    (``create_commit(parent_commit=)``), so an edit that lands in between is refused by the Hub (412), not
    silently mixed with the run's files. Nothing is recorded unless the commit was made.
    """
    if what not in KINDS:
        raise BadInputError(f"--what must be one of {', '.join(KINDS)}")
    run = Run.open(run_dir)
    plan = plan_commit(run, recorded_config(run), what=what, repo_id=repo_id, revision=revision, private=private)
    if dry_run:
        out = run.path / ".packager" / "publish" / f"hub-{what}.plan.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
        return HubResult(plan, None, None, [f.path_in_repo for f in plan.files], [], dry_run_file=out)
    report = verify_run(run.path)
    if not report.ok:
        raise IntegrityError(run.path, report.problems)  # never publish what no longer matches its record
    import httpx2  # huggingface_hub's HTTP client: its connection errors are no OSError
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api = client_factory()
    try:
        api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        head = api.repo_info(repo_id, revision=revision, repo_type="model").sha
        remote = {e.path: e for e in api.list_repo_tree(repo_id, recursive=True, revision=head, repo_type="model")
                  if hasattr(e, "blob_id")}
        changed, stale = _changes(plan, remote)
        if not changed and not stale:
            return HubResult(plan, None, None, [], [])
        operations = [CommitOperationAdd(f.path_in_repo, f.content if f.content is not None else str(f.local))
                      for f in changed] + [CommitOperationDelete(p) for p in stale]
        info = api.create_commit(repo_id, operations, commit_message=plan.message, revision=revision,
                                 repo_type="model", parent_commit=head)
    except (BadInputError, StageError):
        raise  # packager's own (MissingPathError is an OSError too)
    except (OSError, httpx2.HTTPError, ValueError, RuntimeError) as exc:
        refusal = _hub_refusal(exc, repo_id, (OSError, httpx2.HTTPError))
        if refusal is None:
            raise  # a bug is no refusal
        raise refusal from None
    with run.stage(f"push-hub-{what}", parameters={"repo_id": repo_id, "revision": revision or "main",
                                                   "private": private}) as st:
        for f in plan.files:
            if f.local is not None:
                st.add_input(f.local)
        st.metrics.update({"commit": info.oid, "url": info.commit_url, "uploaded": [f.path_in_repo for f in changed],
                           "deleted": stale, "message": plan.message, "parent": head})
    return HubResult(plan, info.oid, info.commit_url, [f.path_in_repo for f in changed], stale)


def _hub_refusal(exc: BaseException, repo_id: str, transport: tuple[type, ...]) -> StageError | None:
    """What the Hub (or the way to it) said, as one message; None for an exception that is a bug.

    huggingface_hub raises HfHubHTTPError for an HTTP answer, ``ValueError(...) from BadRequestError`` when
    validate-yaml refuses the card (hf_api.HfApi._validate_yaml), and ``RuntimeError(...) from`` the HTTP
    error when an LFS upload fails (after http_backoff's retries of 5xx; _commit_api._upload_lfs_files).
    """
    from huggingface_hub.errors import BadRequestError, HfHubHTTPError

    cause = exc.__cause__
    nothing = "nothing was recorded in the run; push again when this is fixed"
    if isinstance(exc, ValueError) and isinstance(cause, BadRequestError):
        return StageError("push hub", f"the Hub rejected the model card (README.md): "
                                      f"{' '.join(str(exc).split())}",
                          hint="set the field it names in packager.yaml (export.license, base.hub_id) and push "
                               f"again; {nothing}")
    if isinstance(exc, RuntimeError) and isinstance(cause, transport):
        detail = _hub_refusal(cause, repo_id, transport)
        return StageError("push hub", f"{first_line(exc).rstrip('.')}: {detail.message.removeprefix('push hub: ')}",
                          hint=detail.hint)
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        said = exc.server_message.strip().splitlines()[0] if exc.server_message else first_line(exc)
        if status == 401:
            return StageError("push hub", f"the Hub refused the token (HTTP 401: {said})",
                              hint="set HF_TOKEN to a valid token with write access, or log in again with "
                                   f"`hf auth login`; {nothing}")
        if status == 403:
            return StageError("push hub", f"the token may not write to {repo_id} (HTTP 403: {said})",
                              hint=f"use a token with write access to {repo_id.split('/')[0]}; {nothing}")
        if status == 412:
            return StageError("push hub", f"{repo_id} changed while pushing (HTTP 412: {said})",
                              hint=f"push again: packager compares with the new state; {nothing}")
        return StageError("push hub", f"the Hub refused: HTTP {status}: {said}", hint=nothing)
    if isinstance(exc, transport):
        return StageError("push hub", f"the Hub refused or could not be reached: {type(exc).__name__}: "
                                      f"{first_line(exc)}", hint=nothing)
    return None

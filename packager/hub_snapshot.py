"""Repositories on the Hugging Face Hub as local folders: one commit's files, through huggingface_hub's cache, so
what was downloaded once is read again offline. Base models and Hub datasets both come this way."""

from __future__ import annotations

from pathlib import Path

from packager.errors import MissingPathError, first_line


def download_snapshot(repo_id: str, *, repo_type: str = "model", revision: str | None = None,
                      allow_patterns: list[str] | None = None, revision_hint: str,
                      instead: str) -> tuple[Path, str]:
    """The files of ``repo_id`` at ``revision`` (a branch, tag or full sha; the default branch when None), from
    the Hub or huggingface_hub's cache, and the commit they are at.

    One snapshot_download call pins the revision (it resolves it to a commit once with repo_info, then lists
    and downloads that commit's files only) and names the snapshot folder after the commit, which is what is
    returned. It also writes ``refs/<revision>`` in the cache, and that is how the same call finds the
    snapshot again with HF_HUB_OFFLINE=1 or the Hub out of reach; a model_info or dataset_info call before it
    would fail there, and the branch could move between the two calls.

    ``revision_hint`` is the hint for a revision the repository lacks (where the user sets it); ``instead``
    names what to give when the Hub cannot be used ("a local file").

    Raises:
        MissingPathError: naming the repository and the revision: no such repository (or a gated or private
            one without a token), no such revision, a refused token, or neither the Hub nor the cache has it.
    """
    import httpx2  # huggingface_hub's HTTP client: its transport errors are no OSError
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision,
                                      allow_patterns=allow_patterns))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, httpx2.HTTPError) as exc:
        raise _not_fetched(exc, repo_id, repo_type, revision, revision_hint=revision_hint,
                           instead=instead) from None
    return path, path.name  # snapshots/<commit sha>


def _not_fetched(exc: BaseException, repo_id: str, repo_type: str, revision: str | None, *, revision_hint: str,
                 instead: str) -> MissingPathError:
    """huggingface_hub's error as one message naming the repository and the revision."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, IncompleteSnapshotError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

    at = f"revision {revision!r}" if revision else "the default branch"
    fetch = f"could not fetch from the Hugging Face Hub ({at})"
    login = "set HF_TOKEN or run `hf auth login`"
    if isinstance(exc, GatedRepoError):
        return MissingPathError(repo_id, f"is a gated {repo_type} repository: reading {at} needs the token "
                                         "of an account that accepted its conditions",
                                hint=f"accept the conditions on its Hub page, then {login}")
    if isinstance(exc, RepositoryNotFoundError):
        return MissingPathError(repo_id, f"no such {repo_type} repository on the Hub (or it is gated/private "
                                         "and no token is set)", hint=f"check the id, or {login}")
    if isinstance(exc, RevisionNotFoundError):
        return MissingPathError(repo_id, f"has no revision {revision!r} on the Hub", hint=revision_hint)
    if isinstance(exc, HfHubHTTPError) and exc.response is not None and exc.response.status_code == 401:
        said = exc.server_message.strip().splitlines()[0] if exc.server_message else first_line(exc)
        return MissingPathError(repo_id, f"{fetch}: the Hub refused the token (HTTP 401: {said})",
                                hint="set HF_TOKEN to a valid token, or run `hf auth login` again")
    if isinstance(exc, IncompleteSnapshotError):
        return MissingPathError(repo_id, f"{fetch}: the Hub is out of reach and the cached snapshot lacks files",
                                hint=f"download it once more with the Hub in reach, or give {instead}")
    if isinstance(exc, LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE:
        return MissingPathError(repo_id, f"{fetch}: not in the local cache, and HF_HUB_OFFLINE is set",
                                hint=f"download it once with HF_HUB_OFFLINE unset, or give {instead}")
    cause = exc.__cause__ or exc  # snapshot_download's LocalEntryNotFoundError wraps what the Hub said
    return MissingPathError(repo_id, f"{fetch}: {type(cause).__name__}: {first_line(cause)}",
                            hint=f"check the network, or give {instead}")

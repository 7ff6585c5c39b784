"""Push a run's model files to an OCI registry as a CNCF ModelPack artifact (the ``oras`` client).

One file per layer with a ModelPack media type and an ``org.cncf.model.filepath`` annotation; a config
blob describing architecture, format, precision and quantization; the run's manifest digest in the
manifest annotations. Contents and timestamps come from the run, so pushing the same run twice gives the
same manifest digest and uploads nothing new. Credentials come from the environment or the Docker/Podman
auth files, and are never recorded.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from packager.errors import BadInputError, IntegrityError, StageError, first_line
from packager.process import run_command
from packager.publish.files import published_files
from packager.run.directory import Run
from packager.run.lineage import PUBLISH_STAGES, lineage_digest
from packager.run.verify import verify_run


ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG_TYPE = "application/vnd.cncf.model.config.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
DOC = "application/vnd.cncf.model.doc.v1.raw"
FILEPATH = "org.cncf.model.filepath"
REF = re.compile(r"^(?P<host>[a-zA-Z0-9.-]+(?::[0-9]+)?)/(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
                 r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?$")
USER_VARIABLE, PASSWORD_VARIABLE = "PACKAGER_REGISTRY_USERNAME", "PACKAGER_REGISTRY_PASSWORD"


def parse_ref(ref: str) -> tuple[str, str, str]:
    match = REF.fullmatch(ref)
    if not match:
        raise BadInputError(f"{ref!r} is not a registry reference like registry.example.com/team/model:v1")
    return match["host"], match["repo"], match["tag"] or "latest"


# ---------------------------------------------------------------- what is pushed

@dataclass(frozen=True)
class Layer:
    path: Path
    name: str  # path inside the model
    media_type: str
    sha256: str
    size: int


def _media_type(name: str) -> str:
    if name.endswith((".safetensors", ".gguf")):
        return WEIGHT
    return DOC if name.lower().endswith((".md", "license")) else WEIGHT_CONFIG


def artifact_files(run, what: str) -> tuple[list[Layer], dict]:
    """The recorded files of one kind (merged, adapter, gguf) and their ModelPack model config."""
    layers = [Layer(run.resolve(rec.path), name, _media_type(name), rec.sha256, rec.size)
              for name, rec in published_files(run, what)]
    return layers, _model_config(run, what, layers)


def _model_config(run, what: str, layers: list[Layer]) -> dict:
    merge = run.manifest.stages.get("merge")
    train = run.manifest.stages.get("train")
    source = merge or train
    params = source.parameters if source else {}
    quants = [p.name.rsplit("-", 1)[-1][: -len(".gguf")] for p in (l.path for l in layers) if p.suffix == ".gguf"]
    precision = {"gguf": ",".join(quants), "merged": (merge.parameters.get("dtype") if merge else None),
                 "adapter": "float32"}[what]

    finished = max(s.finished_at for s in run.manifest.stages.values() if not s.name.startswith(PUBLISH_STAGES))
    return {
        "descriptor": {"name": run.manifest.run, "createdAt": finished, "family": params.get("architecture"),
                       "vendor": "packager"},
        "config": {"architecture": params.get("architecture"),
                   "format": {"gguf": "gguf", "merged": "safetensors", "adapter": "safetensors"}[what],
                   "precision": precision, "quantization": ",".join(quants) if what == "gguf" else "",
                   "baseModel": params.get("hub_id") or params.get("base_model"),
                   "method": train.parameters.get("method") if train else None},
        "modelfs": {"type": "layers", "diffIds": [f"sha256:{l.sha256}" for l in layers]},
    }


# ---------------------------------------------------------------- credentials

def registry_credentials(host: str) -> tuple[str, str] | None:
    """From PACKAGER_REGISTRY_USERNAME/PASSWORD, else the Podman and Docker auth files, and the credential
    helpers Docker's file names (``credHelpers`` per registry, else ``credsStore``: Docker Desktop keeps every
    login there and leaves ``auths`` empty). Never logged."""
    user, password = os.environ.get(USER_VARIABLE), os.environ.get(PASSWORD_VARIABLE)
    if user and password:
        return user, password
    candidates = [os.environ.get("REGISTRY_AUTH_FILE"),
                  os.environ.get("XDG_RUNTIME_DIR") and f"{os.environ['XDG_RUNTIME_DIR']}/containers/auth.json",
                  Path.home() / ".config" / "containers" / "auth.json",
                  Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"]
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            raise BadInputError(f"{path} is not valid JSON (a container engine auth file)") from None
        auths = config.get("auths", {})
        entry = auths.get(host) or auths.get(f"https://{host}") or auths.get(f"http://{host}")
        helper = (config.get("credHelpers") or {}).get(host)
        if helper is None and not (entry and entry.get("auth")):
            helper = config.get("credsStore")
        if helper:
            found = _from_credential_helper(helper, host, config_file=path)
            if found:
                return found
        elif entry and entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return user, password
    return None


HELPER_TIMEOUT_S = 30


def _from_credential_helper(helper: str, host: str, *, config_file: Path) -> tuple[str, str] | None:
    """``docker-credential-HELPER get`` with the registry on stdin, as Docker calls it (the protocol of
    docker/docker-credential-helpers): JSON with Username and Secret, or "credentials not found"."""
    import shutil

    program = f"docker-credential-{helper}"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", helper) or shutil.which(program) is None:
        raise BadInputError(f"{config_file} names the credential helper {helper!r}, but {program} is not on PATH",
                            hint=f"install it, or set {USER_VARIABLE} and {PASSWORD_VARIABLE}")
    done = run_command([program, "get"], input=host, timeout_s=HELPER_TIMEOUT_S, what="push oci")
    if done.returncode != 0:
        if "credentials not found" in (done.stdout + done.stderr).lower():
            return None
        raise StageError("push oci", f"{program} get failed (exit {done.returncode})")  # its output may hold secrets
    try:
        answer = json.loads(done.stdout)
        return answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError):
        raise StageError("push oci", f"{program} get answered something other than its JSON") from None


def _client(host: str, *, insecure: bool, credentials: tuple[str, str] | None):
    import oras.client  # noqa: F401  (first: importing oras.decorator alone is a circular import)
    import oras.decorator
    import oras.provider

    class Registry(oras.provider.Registry):
        # oras retries every request 5 times over ~131 s, also for 401s and refused connections: once is enough
        do_request = oras.decorator.retry(attempts=0)(oras.provider.Registry.do_request.__wrapped__)

    client = Registry(hostname=host, insecure=insecure, auth_backend="basic")
    client.auth.load_configs = lambda *args, **kwargs: None  # credentials are ours, not a stale config entry
    if credentials:
        client.auth.set_basic_auth(*credentials)
        client.session.auth = credentials  # sent up front: big PUTs are not sent twice after a 401
    return client


def _check_registry(client, host: str, *, insecure: bool, credentials) -> None:
    import requests

    url = f"{'http' if insecure else 'https'}://{host}/v2/"
    try:
        response = client.session.get(url, timeout=30)
    except requests.exceptions.ConnectionError as exc:
        reason = "connection refused" if "refused" in str(exc).lower() else first_line(exc, limit=200)
        raise StageError("push oci", f"cannot reach the registry {host} ({reason})",
                         hint="is it running? (--insecure for a plain-HTTP local registry)") from None
    if response.status_code == 401:
        raise StageError("push oci", f"the registry {host} refused the credentials" if credentials else
                         f"the registry {host} needs credentials",
                         hint=f"set {USER_VARIABLE} and {PASSWORD_VARIABLE}, or log in with "
                              "`podman login` / `docker login`")
    if response.status_code >= 400:
        raise StageError("push oci", f"the registry {host} answered {response.status_code} to GET /v2/")


# ---------------------------------------------------------------- the stage

@dataclass
class PushResult:
    ref: str
    digest: str
    layers: int
    uploaded_bytes: int
    already_there: bool

    def summary(self) -> str:
        state = "already there, nothing uploaded" if self.already_there else f"{self.uploaded_bytes:,} bytes uploaded"
        return f"{self.ref}@{self.digest} ({self.layers} layers; {state})"


def push_oci(run_dir: Path | str, ref: str, *, what: str = "gguf", insecure: bool = False) -> PushResult:
    """``packager push oci RUN REF``: verify, upload missing blobs, put the manifest, record the digest."""
    import tempfile

    import requests

    host, repo, tag = parse_ref(ref)
    run = Run.open(run_dir)
    layers, model_config = artifact_files(run, what)
    report = verify_run(run.path)
    if not report.ok:
        raise IntegrityError(run.path, report.problems)  # never push what no longer matches its record
    credentials = registry_credentials(host)
    client = _client(host, insecure=insecure, credentials=credentials)
    _check_registry(client, host, insecure=insecure, credentials=credentials)
    import oras.oci

    container = client.get_container(f"{host}/{repo}:{tag}")
    manifest_digest = lineage_digest(run.manifest)
    uploaded = 0
    try:
        descriptors = []
        for layer in layers:
            descriptor = {"mediaType": layer.media_type, "digest": f"sha256:{layer.sha256}", "size": layer.size,
                          "annotations": {FILEPATH: layer.name, "org.opencontainers.image.title": layer.name}}
            if not client.blob_exists(descriptor, container):
                client._check_200_response(client.upload_blob(str(layer.path), container, descriptor,
                                                              do_chunked=layer.size > 64 << 20))
                uploaded += layer.size
            descriptors.append(descriptor)
        with tempfile.TemporaryDirectory() as tmp:
            config_file = Path(tmp) / "config.json"
            config_file.write_bytes(json.dumps(model_config, sort_keys=True).encode())
            config, _ = oras.oci.ManifestConfig(str(config_file), CONFIG_TYPE)
            if not client.blob_exists(config, container):
                client._check_200_response(client.upload_blob(str(config_file), container, config))
        manifest = oras.oci.NewManifest()
        manifest.update(artifactType=ARTIFACT_TYPE, config=config, layers=descriptors, annotations={
            "org.opencontainers.image.created": model_config["descriptor"]["createdAt"],
            "org.opencontainers.image.title": f"{run.manifest.run} ({what})",
            "dev.packager.manifest-digest": f"sha256:{manifest_digest}"})
        previous = run.manifest.stages.get(f"push-oci-{what}")
        response = client.upload_manifest(manifest, container)
        client._check_200_response(response)
    except requests.exceptions.ConnectionError:
        raise StageError("push oci", f"the registry {host} went away during the push; nothing was recorded",
                         hint="re-run the same command: blobs already uploaded are not sent again") from None
    except ValueError as exc:  # oras raises ValueError for registry error responses
        raise StageError("push oci", f"the registry {host} refused the push: {str(exc)[:300]}") from None
    digest = response.headers.get("Docker-Content-Digest", "")
    same = previous is not None and previous.metrics.get("digest") == digest and previous.metrics.get("ref") == ref
    if not same:
        with run.stage(f"push-oci-{what}", parameters={"ref": ref, "what": what, "insecure": insecure}) as st:
            for layer in layers:
                st.add_input(layer.path)
            st.metrics.update({"ref": ref, "digest": digest, "layers": len(layers), "uploaded_bytes": uploaded,
                               "manifest_digest": f"sha256:{manifest_digest}", "artifact_type": ARTIFACT_TYPE})
    return PushResult(ref, digest, len(layers), uploaded, already_there=same)


def pull_oci(ref: str, out_dir: Path | str, *, insecure: bool = False) -> dict:
    """Fetch an artifact's manifest and files back (tests and `packager verify` of a pushed model)."""
    host, repo, tag = parse_ref(ref)
    credentials = registry_credentials(host)
    client = _client(host, insecure=insecure, credentials=credentials)
    _check_registry(client, host, insecure=insecure, credentials=credentials)
    container = client.get_container(f"{host}/{repo}:{tag}")
    manifest = client.get_manifest(container)
    out_dir = Path(out_dir)
    for layer in manifest["layers"]:
        name = layer["annotations"][FILEPATH]
        if name.startswith("/") or ".." in Path(name).parts:
            raise BadInputError(f"{ref}: layer path {name!r} escapes the output directory")
        client.download_blob(container, layer["digest"], str(out_dir / name))
    return manifest

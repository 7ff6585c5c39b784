"""Publishing: OCI artifacts to a real registry (Debian's docker-registry on 127.0.0.1, with and without
htpasswd auth), signing with model-signing, the Hub, and deploy.

The Hub is a local one on 127.0.0.1 (tests/support/hub_server.py: repos, commits with parents, LFS objects by
sha256, tokens, the Hub's card validation) and packager talks to it with its own client, the real HfApi with
HF_TOKEN, pointed there as HF_ENDPOINT would; the tests assert what the Hub holds and what reached it.
"""

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from packager.cli import cli
from packager.errors import BadInputError, IntegrityError
from packager.run.manifest import read_manifest

from support.runs import copy_run


# ---------------------------------------------------------------- a real local registry


@pytest.fixture
def served(smollm2_served_run, tmp_path):
    return copy_run(smollm2_served_run, tmp_path / "smol")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_gguf_and_merged_push_as_modelpack_artifacts_and_pull_back_identical(runner, served, registry, tmp_path):
    from packager.publish.oci import pull_oci

    assert runner.invoke(cli, ["export", str(served), "--format", "safetensors"]).exit_code == 0
    for what in ("gguf", "merged"):
        ref = f"{registry.host}/models/smol-{what}:v1"
        pushed = runner.invoke(cli, ["push", "oci", str(served), ref, "--what", what, "--insecure"])
        assert pushed.exit_code == 0, pushed.output
        manifest = pull_oci(ref, tmp_path / f"pulled-{what}", insecure=True)
        assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
        assert manifest["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
        folder = served / ("export/gguf" if what == "gguf" else "export/safetensors")
        names = sorted(layer["annotations"]["org.cncf.model.filepath"] for layer in manifest["layers"])
        assert names == sorted(p.name for p in folder.iterdir())
        for name in names:
            assert sha256(tmp_path / f"pulled-{what}" / name) == sha256(folder / name)
        weights = [l for l in manifest["layers"] if l["annotations"]["org.cncf.model.filepath"].endswith(
            (".gguf", ".safetensors"))]
        assert all(l["mediaType"] == "application/vnd.cncf.model.weight.v1.raw" for l in weights)
        stage = read_manifest(served).stages[f"push-oci-{what}"]
        assert stage.metrics["digest"].startswith("sha256:") and stage.metrics["ref"] == ref

    # Pushing again uploads nothing and records nothing new.
    before = read_manifest(served).stages["push-oci-gguf"]
    again = runner.invoke(cli, ["push", "oci", str(served), f"{registry.host}/models/smol-gguf:v1", "--insecure"])
    assert again.exit_code == 0 and "already there, nothing uploaded" in again.output
    assert read_manifest(served).stages["push-oci-gguf"] == before


@pytest.mark.slow
def test_registry_credentials_down_and_wrong(runner, served, auth_registry, tmp_path):
    ref = f"{auth_registry.host}/models/smol:v1"
    anonymous = runner.invoke(cli, ["push", "oci", str(served), ref, "--insecure"])
    assert anonymous.exit_code == 1 and "needs credentials" in anonymous.output
    wrong = runner.invoke(cli, ["push", "oci", str(served), ref, "--insecure"],
                          env={"PACKAGER_REGISTRY_USERNAME": "ci", "PACKAGER_REGISTRY_PASSWORD": "nope"})
    assert wrong.exit_code == 1 and "refused the credentials" in wrong.output
    assert "nope" not in wrong.output and "push-oci-gguf" not in read_manifest(served).stages

    # credentials from a Docker-style auth file
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {auth_registry.host: {
        "auth": __import__("base64").b64encode(b"ci:s3cret-pw").decode()}}}))
    ok = runner.invoke(cli, ["push", "oci", str(served), ref, "--insecure"], env={"REGISTRY_AUTH_FILE": str(auth)})
    assert ok.exit_code == 0, ok.output
    assert "s3cret" not in (served / "manifest.json").read_text()

    auth_registry.stop()
    down = runner.invoke(cli, ["push", "oci", str(served), f"{auth_registry.host}/models/other:v1", "--insecure"],
                         env={"REGISTRY_AUTH_FILE": str(auth)})
    assert down.exit_code == 1 and "cannot reach the registry" in down.output and "connection refused" in down.output
    assert read_manifest(served).stages["push-oci-gguf"].metrics["ref"] == ref  # the failed push recorded nothing


def test_references_are_checked():
    from packager.publish.oci import parse_ref

    assert parse_ref("127.0.0.1:5000/models/smol:v1") == ("127.0.0.1:5000", "models/smol", "v1")
    with pytest.raises(BadInputError, match="not a registry reference"):
        parse_ref("smol:v1; rm -rf /")


# ---------------------------------------------------------------- signing

@pytest.mark.slow
def test_signing_detects_a_changed_byte_a_deleted_and_an_added_file_and_an_edited_manifest(runner, served,
                                                                                           tmp_path):
    keys = tmp_path / "keys"
    assert runner.invoke(cli, ["keygen", str(keys)]).exit_code == 0
    assert oct((keys / "signing-key.pem").stat().st_mode & 0o777) == "0o600"
    signed = runner.invoke(cli, ["sign", str(served), "--key", str(keys / "signing-key.pem")])
    assert signed.exit_code == 0, signed.output
    public = str(keys / "signing-key.pub.pem")
    ok = runner.invoke(cli, ["verify", str(served), "--key", public])
    assert ok.exit_code == 0 and "signature OK" in ok.output

    from packager.publish.signing import verify_signature

    def tampered(paths: list[str], change, expect: str):
        """Change the signed run in place, expect verification to name it, put it back (no 1 GB copies)."""
        saved = {p: (served / p).read_bytes() if (served / p).exists() else None for p in paths}
        change(served)
        try:
            with pytest.raises(IntegrityError, match=expect):
                verify_signature(served, public_key=public)
        finally:
            for p, data in saved.items():
                if data is None:
                    (served / p).unlink(missing_ok=True)
                else:
                    (served / p).write_bytes(data)
        assert verify_signature(served, public_key=public)  # restored: verifies again

    def flip(path):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))

    def edit_manifest(r):
        manifest = json.loads((r / "manifest.json").read_text())
        manifest["stages"]["train"]["parameters"]["config"]["train"]["learning_rate"] = 0.1
        (r / "manifest.json").write_text(json.dumps(manifest))

    adapter, tokenizer_config = "train/adapter/adapter_model.safetensors", "merged/tokenizer_config.json"
    tampered([adapter], lambda r: flip(r / adapter), "adapter_model.safetensors")
    tampered([tokenizer_config], lambda r: (r / tokenizer_config).unlink(), "Missing files.*tokenizer_config.json")
    tampered(["merged/extra.py"], lambda r: (r / "merged/extra.py").write_text("print('hi')"), "Extra files.*extra.py")
    tampered(["manifest.json"], edit_manifest, "stage 'train' differs from what was signed")
    other = tmp_path / "other"
    runner.invoke(cli, ["keygen", str(other)])
    with pytest.raises(IntegrityError, match="signature"):
        verify_signature(served, public_key=other / "signing-key.pub.pem")


# ---------------------------------------------------------------- the Hub, through the real client

HUB_TOKEN = "hf_packagerPusher0123456789"


@pytest.fixture
def hub(local_hub, monkeypatch, tmp_path):
    """The local Hub, knowing one token (user ``me``), and huggingface_hub pointed at it; packager's default
    client (HfApi with the token from HF_TOKEN) reaches it unchanged."""
    from support.hub_server import point_huggingface_hub_at

    local_hub.tokens = {HUB_TOKEN: "me"}
    point_huggingface_hub_at(local_hub, monkeypatch, tmp_path / "hf-home")
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    return local_hub


@pytest.fixture(scope="module")
def tiny_pushable_build(tmp_path_factory, tiny_llama_dir) -> Path:
    """A tiny LoRA run, dry-run trained, merged and exported as safetensors, once for this module: the push
    mechanics need files and a manifest, not SmolLM2. Copy it before changing it."""
    from click.testing import CliRunner

    from packager.config import load_config
    from support.runs import write_config

    config = write_config(tmp_path_factory.mktemp("tiny-push"), tiny_llama_dir, learning_rate=0.05)
    cfg = yaml.safe_load(config.read_text())
    cfg["base"]["hub_id"] = "packager-tests/tiny-llama"
    config.write_text(yaml.safe_dump(cfg))
    run_dir = load_config(config).run_dir
    for args in (["train", "-c", str(config), "--dry-run"], ["merge", str(run_dir)],
                 ["export", str(run_dir), "--format", "safetensors"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, (args, result.output)
    return run_dir


@pytest.fixture
def pushable_run(tiny_pushable_build, tmp_path) -> Path:
    return copy_run(tiny_pushable_build, tmp_path / "runs" / "t")


def commit_posts(hub) -> list[str]:
    return [path for method, path in hub.requests if method == "POST" and "/commit/" in path]


def pushed_stages(run_dir: Path) -> list[str]:
    return [name for name in read_manifest(run_dir).stages if name.startswith("push-hub")]


def test_hub_push_of_a_tiny_run_commits_once_and_uploads_its_weights_once(hub, pushable_run):
    from huggingface_hub import HfApi

    from packager.publish.hub import push_hub

    first = push_hub(pushable_run, repo_id="me/t", what="merged")

    history = hub.log("me/t")
    assert [c.message.split(" (")[0] for c in history] == ["packager: merged of run t", "initial commit"]
    assert history[0].parent == history[1].sha and history[0].author == "me"
    local = {p.name: p.read_bytes() for p in (pushable_run / "export" / "safetensors").iterdir()
             if p.name != "README.md"}
    remote = hub.files_at("me/t")
    assert {k: v for k, v in remote.items() if k not in ("README.md", ".gitattributes")} == local
    assert remote["README.md"].decode() == first.plan.to_dict()["card"]
    assert history[0].lfs == {"model.safetensors"}  # as the Hub's .gitattributes says; tokenizer.json is git
    assert hub.lfs_uploads == [hashlib.sha256(local["model.safetensors"]).hexdigest()]
    stage = read_manifest(pushable_run).stages["push-hub-merged"]
    assert stage.metrics["commit"] == first.commit == hub.head("me/t") and stage.metrics["parent"] == history[1].sha
    assert stage.metrics["url"] == f"{hub.url}/me/t/commit/{first.commit}"
    assert HfApi().model_info("me/t").private is True  # --private is the default
    assert all(e.headers.get("authorization") == f"Bearer {HUB_TOKEN}" for e in hub.exchanges
               if e.server == "hub" and "/me/t" in e.target)

    seen = len(hub.requests)
    second = push_hub(pushable_run, repo_id="me/t", what="merged")
    assert second.commit is None and len(hub.lfs_uploads) == 1
    assert hub.requests[seen:] == [("POST", "/api/repos/create"), ("GET", "/api/models/me/t"),  # 409, then head
                                   ("GET", f"/api/models/me/t/tree/{first.commit}")]  # decided from the listing
    assert read_manifest(pushable_run).stages["push-hub-merged"] == stage  # nothing new recorded

    edited = hub.edit("me/t", add={"README.md": "# edited on the Hub\n", "extra.bin": b"\0stale"},
                      delete=("tokenizer.json",))
    third = push_hub(pushable_run, repo_id="me/t", what="merged")
    assert (third.uploaded, third.deleted) == (["README.md", "tokenizer.json"], ["extra.bin"])
    assert [c.sha for c in hub.log("me/t")[:2]] == [third.commit, edited] and len(hub.log("me/t")) == 4
    assert hub.files_at("me/t") == remote and len(hub.lfs_uploads) == 1  # restored; the weights not resent
    header = json.loads([e.body for e in hub.exchanges if "/commit/" in e.target][-1].splitlines()[0])
    assert header["value"]["parentCommit"] == edited  # the commit was made on the state it was compared with


def test_hub_push_refusals_are_clear_and_leave_nothing_recorded(hub, pushable_run, tiny_pushable_build, runner,
                                                                tmp_path):
    from packager.errors import StageError
    from packager.publish.hub import push_hub

    forged = runner.invoke(cli, ["push", "hub", str(pushable_run), "--repo-id", "me/t"], env={"HF_TOKEN": "hf_forged"})
    assert forged.exit_code == 1
    assert "the Hub refused the token (HTTP 401: Invalid credentials in Authorization header)" in forged.output
    assert "HF_TOKEN" in forged.output and "hf_forged" not in forged.output
    with pytest.raises(KeyError):
        hub.head("me/t")  # not even the repo was created

    hub.fail_next("POST", "/api/models/me/t/commit/main", status=500)
    with pytest.raises(StageError, match="the Hub refused: HTTP 500: Internal Error") as failed:
        push_hub(pushable_run, repo_id="me/t", what="merged")
    assert "nothing was recorded" in failed.value.hint
    assert [c.message for c in hub.log("me/t")] == ["initial commit"] and pushed_stages(pushable_run) == []
    assert len(hub.lfs_uploads) == 1  # the weights reached the LFS storage before the commit failed
    pushed = push_hub(pushable_run, repo_id="me/t", what="merged")
    assert pushed.commit == hub.head("me/t") and len(hub.lfs_uploads) == 1  # and are not sent again
    assert pushed_stages(pushable_run) == ["push-hub-merged"]

    hub.fail_next("PUT", "/upload/models/me/t-adapter/*", status=503)  # retried by huggingface_hub's backoff
    adapter = push_hub(pushable_run, repo_id="me/t-adapter", what="adapter")
    puts = [e.status for e in hub.exchanges if e.method == "PUT" and "/me/t-adapter/" in e.target]
    assert puts == [503, 200] and adapter.commit == hub.head("me/t-adapter")
    assert "adapter_model.safetensors" in hub.log("me/t-adapter")[0].lfs
    hub.fail_next("PUT", "/upload/models/me/t-adapter-2/*", status=507)  # a 5xx http_backoff does not retry
    with pytest.raises(StageError, match="Error while uploading 'adapter_model.safetensors' to the Hub: "
                                         "the Hub refused: HTTP 507"):
        push_hub(pushable_run, repo_id="me/t-adapter-2", what="adapter")
    assert [c.message for c in hub.log("me/t-adapter-2")] == ["initial commit"]
    assert pushed_stages(pushable_run) == ["push-hub-merged", "push-hub-adapter"]

    # A card the Hub's validate-yaml refuses (a license id it does not know): refused before any upload.
    proprietary = copy_run(tiny_pushable_build, tmp_path / "proprietary" / "t")
    manifest = json.loads((proprietary / "manifest.json").read_text())
    manifest["stages"]["train"]["parameters"]["config"]["export"]["license"] = "proprietary"
    (proprietary / "manifest.json").write_text(json.dumps(manifest))
    uploads = len(hub.lfs_uploads)
    with pytest.raises(StageError, match=r'rejected the model card \(README.md\).*"license" must be one of'):
        push_hub(proprietary, repo_id="me/t-proprietary", what="merged")
    assert [c.message for c in hub.log("me/t-proprietary")] == ["initial commit"]
    assert len(hub.lfs_uploads) == uploads and "push-hub-merged" not in read_manifest(proprietary).stages

    local_base = copy_run(tiny_pushable_build, tmp_path / "local-base" / "t")
    manifest = json.loads((local_base / "manifest.json").read_text())
    manifest["stages"]["train"]["parameters"]["config"]["base"]["hub_id"] = "./checkpoints/base"
    (local_base / "manifest.json").write_text(json.dumps(manifest))
    requests = len(hub.requests)
    with pytest.raises(BadInputError, match="'./checkpoints/base' is not a Hub id"):
        push_hub(local_base, repo_id="me/t-local", what="merged", dry_run=True)  # caught before the Hub would
    assert len(hub.requests) == requests


@pytest.mark.slow
def test_hub_push_is_idempotent_and_uploads_only_what_changed(served, hub):
    from packager.publish.hub import push_hub
    from packager.serve.containerize import containerize_run

    containerize_run(served, target="ollama")  # the card says what context the servers get
    first = push_hub(served, repo_id="me/smol-GGUF", what="gguf")
    files = hub.files_at("me/smol-GGUF")
    assert sorted(files) == [".gitattributes", "README.md", "params", "smol-q8_0.gguf", "template"]
    history = hub.log("me/smol-GGUF")
    assert history[0].message.startswith("packager: gguf of run smol (manifest lineage") and len(history) == 2
    assert history[0].lfs == {"smol-q8_0.gguf"}  # over 10 MiB, and binary
    gguf = (served / "export" / "gguf" / "smol-q8_0.gguf").read_bytes()
    assert files["smol-q8_0.gguf"] == gguf and hub.lfs_uploads == [hashlib.sha256(gguf).hexdigest()]
    stage = read_manifest(served).stages["push-hub-gguf"]
    assert stage.metrics["commit"] == first.commit == history[0].sha and stage.metrics["url"].endswith(first.commit)

    posts = len(commit_posts(hub))
    second = push_hub(served, repo_id="me/smol-GGUF", what="gguf")
    assert second.commit is None and len(commit_posts(hub)) == posts  # nothing new: no commit reached the Hub

    edited = hub.edit("me/smol-GGUF", add={"template": "{{ .Prompt }}", "old-model.gguf": b"GGUF\0stale"})
    third = push_hub(served, repo_id="me/smol-GGUF", what="gguf")
    assert (third.uploaded, third.deleted) == (["template"], ["old-model.gguf"])
    assert hub.log("me/smol-GGUF")[0].parent == edited and len(commit_posts(hub)) == posts + 1
    assert hub.files_at("me/smol-GGUF") == files and len(hub.lfs_uploads) == 1  # the GGUF was sent once

    front = yaml.safe_load(files["README.md"].decode().split("---")[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and front["base_model_relation"] == "quantized"
    params = json.loads(files["params"])
    assert params["stop"] == ["<|im_end|>"] and params["num_ctx"] == 8192
    assert "<|im_start|>assistant" in files["template"].decode()
    assert "| ollama | 8192 | the model's own limit (training used 256) |" in files["README.md"].decode()


@pytest.mark.slow
def test_hub_dry_run_plan_and_refusals(runner, served, tmp_path):
    result = runner.invoke(cli, ["push", "hub", str(served), "--repo-id", "me/smol-adapter", "--what", "adapter",
                                 "--dry-run"], env={"HF_TOKEN": ""})
    assert result.exit_code == 0, result.output
    plan = json.loads((served / ".packager/publish/hub-adapter.plan.json").read_text())
    assert {f["path"] for f in plan["files"]} >= {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    front = yaml.safe_load(plan["card"].split("---")[1])
    assert front["library_name"] == "peft" and front["base_model_relation"] == "adapter"
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    recorded = {o.path: o.sha256 for s in read_manifest(served).stages.values() for o in s.outputs}
    assert all(recorded[f"train/adapter/{f['path']}"] == f["sha256"] for f in plan["files"] if f["path"] != "README.md")

    no_merged = runner.invoke(cli, ["push", "hub", str(served), "--repo-id", "me/smol", "--dry-run"])
    assert no_merged.exit_code == 2 and f"packager export {served} --format safetensors" in no_merged.output
    no_token = runner.invoke(cli, ["push", "hub", str(served), "--repo-id", "me/smol", "--what", "adapter"],
                             env={"HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf")})
    assert no_token.exit_code == 2 and "no Hugging Face token" in no_token.output
    bad_id = runner.invoke(cli, ["push", "hub", str(served), "--repo-id", "../etc", "--dry-run"])
    assert bad_id.exit_code == 2 and "not a Hub repo id" in bad_id.output


# ---------------------------------------------------------------- deploy

def deploy_config(run_dir: Path, tmp_path: Path, **overrides) -> Path:
    """The run's own config (so training is skipped), with release settings."""
    cfg = read_manifest(run_dir).stages["train"].parameters["config"]
    cfg["run"] = {"name": run_dir.name, "root": str(run_dir.parent)}
    cfg["eval"].update({"limit": 4, "max_new_tokens": 48})
    cfg["containers"] = {"targets": ["ollama"], "pull": False}
    cfg["publish"] = {"oci_ref": "unused.example/models/smol:v1", "hub_repo": "me/smol"}
    for section, values in overrides.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path = tmp_path / "release.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_deploy_signs_and_pushes_then_a_second_deploy_does_nothing(runner, served, registry, tmp_path):
    config = deploy_config(served, tmp_path)
    keys = tmp_path / "keys"
    runner.invoke(cli, ["keygen", str(keys)])
    secrets = {"HF_TOKEN": "hf_packagerTestSecret0123456789", "PACKAGER_REGISTRY_USERNAME": "ci-user",
               "PACKAGER_REGISTRY_PASSWORD": "registry-Secret-42"}
    args = ["deploy", "-c", str(config), "--registry", f"{registry.host}/models", "--insecure",
            "--key", str(keys / "signing-key.pem"), "--no-build"]
    first = runner.invoke(cli, args, env=secrets)
    assert first.exit_code == 0, first.output
    for line in ("train: skipped", "eval: done", "eval gate: passed", "export safetensors: done", "smoke ollama: done",
                 "sign: done", "push oci gguf: done", "push oci merged: done", "hub merged: planned (dry run"):
        assert line in first.output, line
    stages = read_manifest(served).stages
    assert stages["smoke-ollama"].metrics["passed"] and stages["push-oci-merged"].metrics["digest"]
    assert (served / ".packager/publish/hub-merged.plan.json").is_file()
    ok = runner.invoke(cli, ["verify", str(served), "--key", str(keys / "signing-key.pub.pem")])
    assert ok.exit_code == 0, ok.output

    second = runner.invoke(cli, args, env=secrets)
    assert second.exit_code == 0, second.output
    assert "nothing to do" in second.output and ": done" not in second.output
    assert read_manifest(served).stages["push-oci-gguf"] == stages["push-oci-gguf"]  # nothing new pushed

    # No secret reached any file of the run (manifest, logs, reports, rendered files, plans).
    for file in served.rglob("*"):
        if file.is_file() and file.stat().st_size < 50 << 20:
            data = file.read_bytes()
            for value in secrets.values():
                assert value.encode() not in data, (file, value)


@pytest.mark.slow
def test_deploy_refuses_to_push_when_the_gate_fails(runner, served, registry, tmp_path):
    import requests

    config = deploy_config(served, tmp_path, eval={"format_regex": "NEVER MATCHES",
                                                   "gate": {"min_format_adherence": 0.5, "must_beat_base": False}})
    result = runner.invoke(cli, ["deploy", "-c", str(config), "--registry", f"{registry.host}/models", "--insecure",
                                 "--no-build"])
    assert result.exit_code == 1
    assert "the eval gate failed" in result.output and "eval/report.html" in result.output
    assert not any(name.startswith(("push-", "containerize", "smoke")) for name in read_manifest(served).stages)
    assert requests.get(f"http://{registry.host}/v2/_catalog", timeout=5).json()["repositories"] == []

"""Publishing: OCI artifacts to a real registry (Debian's docker-registry on 127.0.0.1, with and without
htpasswd auth), signing with model-signing, the Hub through a client the test supplies, and deploy.

The Hub cannot be reached from here: `FakeHub` keeps a repo's files in memory and implements the four
HfApi calls packager makes (create_repo, create_branch, list_repo_tree, create_commit), so the tests
assert the exact operations; the dry-run plan is checked as written.
"""

import hashlib
import json
from dataclasses import dataclass
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


# ---------------------------------------------------------------- the Hub, through a client the test supplies

@dataclass
class RemoteFile:
    path: str
    size: int
    blob_id: str
    lfs: dict | None


@dataclass
class Commit:
    oid: str
    commit_url: str


class FakeHub:
    """The four HfApi calls packager makes, over an in-memory repo; every call is logged."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.calls: list[tuple] = []
        self.commits = 0

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs.get("private"), kwargs.get("exist_ok")))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs.get("branch")))

    def list_repo_tree(self, repo_id, **kwargs):
        self.calls.append(("list_repo_tree", repo_id))
        return [RemoteFile(p, len(d), hashlib.sha1(b"blob %d\0" % len(d) + d).hexdigest(),
                           {"sha256": hashlib.sha256(d).hexdigest()} if len(d) >= 10 << 20 else None)
                for p, d in self.files.items()]

    def create_commit(self, repo_id, operations, *, commit_message, **kwargs):
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        self.commits += 1
        ops = []
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                source = op.path_or_fileobj
                self.files[op.path_in_repo] = source if isinstance(source, bytes) else Path(source).read_bytes()
                ops.append(("add", op.path_in_repo))
            elif isinstance(op, CommitOperationDelete):
                self.files.pop(op.path_in_repo)
                ops.append(("delete", op.path_in_repo))
        self.calls.append(("create_commit", repo_id, commit_message, sorted(ops)))
        return Commit(f"{self.commits:040x}", f"https://huggingface.co/{repo_id}/commit/{self.commits:040x}")


@pytest.mark.slow
def test_hub_push_is_idempotent_and_uploads_only_what_changed(served):
    from packager.publish.hub import push_hub

    hub = FakeHub()
    first = push_hub(served, repo_id="me/smol-GGUF", what="gguf", client_factory=lambda: hub)
    assert sorted(hub.files) == ["README.md", "params", "smol-q8_0.gguf", "template"]
    assert hub.calls[0] == ("create_repo", "me/smol-GGUF", True, True)
    commit = hub.calls[-1]
    assert commit[0] == "create_commit" and commit[2].startswith("packager: gguf of run smol (manifest lineage")
    stage = read_manifest(served).stages["push-hub-gguf"]
    assert stage.metrics["commit"] == first.commit and stage.metrics["url"].endswith(first.commit)

    second = push_hub(served, repo_id="me/smol-GGUF", what="gguf", client_factory=lambda: hub)
    assert second.commit is None and hub.commits == 1  # nothing new: no commit

    hub.files["template"] = b"{{ .Prompt }}"  # someone edited the repo
    hub.files["old-model.gguf"] = b"stale"
    third = push_hub(served, repo_id="me/smol-GGUF", what="gguf", client_factory=lambda: hub)
    assert hub.calls[-1][3] == [("add", "template"), ("delete", "old-model.gguf")] and third.commit

    card = hub.files["README.md"].decode()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and front["base_model_relation"] == "quantized"
    params = json.loads(hub.files["params"])
    assert params["stop"] == ["<|im_end|>"] and params["num_ctx"] == 256
    assert "<|im_start|>assistant" in hub.files["template"].decode() or third.commit


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

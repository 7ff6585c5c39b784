"""Tampering with every kind of artifact a run holds is caught, naming the file.

One signed tiny run holds every kind: the adapter, a merged shard, a tokenizer file, a GGUF, the rendered
vLLM Dockerfile, the Ollama Modelfile, and the manifest itself. Each is changed by one byte, deleted, and
joined by an added file, in place; `packager verify` (exit 1) and the signature check (`verify --key`) must
each name the file; the run is then put back and verifies again, so one run serves every variant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from packager.cli import cli
from packager.errors import IntegrityError, PackagerError

from support.runs import copy_run

KINDS = {  # artifact kind -> (recorded file, an added file beside it)
    "adapter": ("train/adapter/adapter_model.safetensors", "train/adapter/adapter_model.extra.safetensors"),
    "merged-shard": ("merged/model.safetensors", "merged/model-00002-of-00002.safetensors"),
    "tokenizer-file": ("merged/tokenizer.json", "merged/added_tokens.json"),
    "gguf": ("export/gguf/t-f16.gguf", "export/gguf/t-q4_0.gguf"),
    "dockerfile": ("containers/vllm/Dockerfile", "containers/vllm/entrypoint.sh"),
    "modelfile": ("containers/ollama/Modelfile", "containers/ollama/Modelfile.orig"),
    "manifest": ("manifest.json", "manifest.json.bak"),
}
VARIANTS = ("one-byte", "deleted", "added")


@pytest.fixture(scope="module")
def signed_run(tiny_gguf_run, tmp_path_factory):
    """The tiny run with a GGUF, both serving contexts and a signature: every artifact kind, once."""
    from click.testing import CliRunner

    runner = CliRunner()
    root = tmp_path_factory.mktemp("tamper")
    run = copy_run(tiny_gguf_run, root / "t")
    serving = read_config(run)
    serving["containers"] = {"ollama": {"quant": "f16"}}
    (root / "serve.yaml").write_text(yaml.safe_dump(serving))
    keys = root / "keys"
    for args in (["containerize", str(run), "--target", "vllm"],
                 ["containerize", str(run), "--target", "ollama", "-c", str(root / "serve.yaml")],
                 ["keygen", str(keys)], ["sign", str(run), "--key", str(keys / "signing-key.pem")]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (args, result.output)
    for rel, _ in KINDS.values():
        assert (run / rel).is_file(), rel
    return run, keys / "signing-key.pub.pem"


def read_config(run: Path) -> dict:
    from packager.run.manifest import read_manifest

    return read_manifest(run).stages["train"].parameters["config"]


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def flip_manifest_digest(path: Path) -> str:
    """One byte of the manifest: a hex digit of the adapter's recorded sha256 (still valid JSON)."""
    text = path.read_text()
    data = json.loads(text)
    rec = next(o for o in data["stages"]["train"]["outputs"] if o["path"] == KINDS["adapter"][0])
    old = rec["sha256"]
    new = old[:-1] + ("0" if old[-1] != "0" else "1")
    assert text.count(old) >= 1
    path.write_text(text.replace(f'"sha256": "{old}"', f'"sha256": "{new}"', 1))
    return KINDS["adapter"][0]


@dataclass(frozen=True)
class Tamper:
    kind: str
    variant: str

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.variant}"


TAMPERS = [Tamper(k, v) for k in KINDS for v in VARIANTS]


def apply(run: Path, tamper: Tamper) -> str:
    """Change the run; returns the file name both checks must report."""
    recorded, added = KINDS[tamper.kind]
    if tamper.variant == "added":
        (run / added).write_bytes(b"not recorded anywhere\n")
        return added
    if tamper.variant == "deleted":
        (run / recorded).unlink()
        return recorded
    if tamper.kind == "manifest":
        return flip_manifest_digest(run / recorded)
    flip_middle_byte(run / recorded)
    return recorded


EXPECTED_VERIFY = {  # (kind, variant) -> (exit code, what the message says) where it is not the usual
    ("manifest", "deleted"): (2, "not a packager run (no manifest.json)"),
}


@pytest.mark.parametrize("tamper", TAMPERS, ids=[t.id for t in TAMPERS])
def test_verify_and_the_signature_name_the_tampered_file(signed_run, runner, tamper):
    run, public_key = signed_run
    saved = {p: (run / p).read_bytes() for p, _ in KINDS.values()}
    named = apply(run, tamper)
    try:
        result = runner.invoke(cli, ["verify", str(run)])
        code, what = EXPECTED_VERIFY.get((tamper.kind, tamper.variant), (1, None))
        assert result.exit_code == code, result.output
        assert (what or named) in result.output, result.output
        if what is None:
            kind = {"one-byte": "modified", "deleted": "missing", "added": "unrecorded"}[tamper.variant]
            assert f"{kind}: {named}" in result.output, result.output
        with pytest.raises(PackagerError) as signature:
            from packager.publish.signing import verify_signature

            verify_signature(run, public_key=public_key)
        message = str(signature.value)
        signed_name = "manifest.json" if tamper.kind == "manifest" and tamper.variant != "added" else named
        assert Path(signed_name).name in message, message
        if tamper.kind != "manifest" or tamper.variant == "added":
            assert isinstance(signature.value, IntegrityError), message
        assert "Traceback" not in result.output
    finally:
        for p, data in saved.items():
            (run / p).write_bytes(data)
        _, added = KINDS[tamper.kind]
        (run / added).unlink(missing_ok=True)
    restored = runner.invoke(cli, ["verify", str(run), "--key", str(public_key)])
    assert restored.exit_code == 0 and "signature OK" in restored.output, restored.output


def test_a_self_consistent_forged_record_is_caught_by_the_signature(signed_run, runner):
    """An attacker who adds a file *and* a matching record defeats plain verify by design (the manifest is
    the record); the signature, over every file present at signing time, names the added file."""
    from packager.run.hashing import sha256_file
    from packager.publish.signing import verify_signature

    run, public_key = signed_run
    manifest = run / "manifest.json"
    saved = manifest.read_bytes()
    extra = run / "merged" / "backdoor.py"
    extra.write_text("import os\n")
    data = json.loads(saved)
    digest = sha256_file(extra)
    data["stages"]["merge"]["outputs"].append({"path": "merged/backdoor.py", "sha256": digest.sha256,
                                               "size": digest.size,
                                               "parents": data["stages"]["merge"]["outputs"][0]["parents"]})
    manifest.write_text(json.dumps(data, indent=2))
    try:
        assert runner.invoke(cli, ["verify", str(run)]).exit_code == 0  # consistent: only a signature can tell
        with pytest.raises(IntegrityError, match="Extra files.*merged/backdoor.py"):
            verify_signature(run, public_key=public_key)
        keyed = runner.invoke(cli, ["verify", str(run), "--key", str(public_key)])
        assert keyed.exit_code == 1 and "backdoor.py" in keyed.output, keyed.output
    finally:
        manifest.write_bytes(saved)
        extra.unlink()
    assert runner.invoke(cli, ["verify", str(run), "--key", str(public_key)]).exit_code == 0


def test_every_kind_and_variant_is_covered():
    assert len(TAMPERS) == len(KINDS) * len(VARIANTS) == 21

"""Sign a run's artifacts in the OpenSSF model-signing format, offline, with a local key; verify them.

The signature (``RUN/signatures/run.sig``: a Sigstore bundle whose in-toto statement lists every file's
sha256) covers every file of the run except packager's state (``.packager/``), the signatures folder and
``manifest.json`` itself, which publishing still appends to. What the manifest said at signing time is
signed too: stage ``sign-lineage`` records ``signed/lineage.json`` (every earlier stage: inputs, outputs,
digests, parameters, metrics) before ``sign`` signs it, so editing any recorded stage afterwards is caught too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from packager.errors import (DependencyMissingError, InputFileError, IntegrityError, MissingPathError, UnsafeInputError,
                             first_line)
from packager.run.atomic import atomic_write_bytes
from packager.run.directory import Run
from packager.run.lineage import lineage
from packager.run.manifest import read_manifest
from packager.run.verify import verify_run


SIGNATURE = Path("signatures") / "run.sig"
LINEAGE = "signed/lineage.json"
IGNORED = [".packager", "signatures", "manifest.json"]


def _model_signing():
    try:
        from model_signing import hashing, signing, verifying
    except ImportError:
        raise DependencyMissingError("model-signing", "to sign and verify runs",
                                     install="pip install 'packager[sign]'") from None
    return hashing, signing, verifying


def generate_key(out_dir: Path | str) -> tuple[Path, Path]:
    """An EC P-256 key pair as PEM: ``signing-key.pem`` (mode 0600) and ``signing-key.pub.pem``."""
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    private, public = out_dir / "signing-key.pem", out_dir / "signing-key.pub.pem"
    for path in (private, public):
        if path.exists():
            raise MissingPathError(path, "already exists; not overwriting a key")
    key = ec.generate_private_key(ec.SECP256R1())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def public_key_of(private_key: Path | str) -> Path:
    """The public key beside a private one (``NAME.pub.pem``), written from it if missing."""
    from cryptography.hazmat.primitives import serialization

    private_key = Path(private_key)
    public = private_key.with_name(private_key.name.removesuffix(".pem") + ".pub.pem")
    if not public.is_file():
        key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    return public


@dataclass
class SignResult:
    run_dir: Path
    signature: Path
    files: int
    already_signed: bool = False

    def summary(self) -> str:
        return f"signed {self.files} files: {self.signature}"


def sign_run(run_dir: Path | str, *, key: Path | str, public_key: Path | str | None = None) -> SignResult:
    """Stage ``sign``: verify the run, write the lineage file, sign every artifact into ``signatures/run.sig``.

    With ``public_key``, a run whose signature already verifies is left alone (idempotent deploys).
    """
    run = Run.open(run_dir)
    key = Path(key)
    if not key.is_file():
        raise MissingPathError(key, "signing key not found", hint="make one with: packager keygen DIR")
    if public_key is not None and (run.path / SIGNATURE).is_file():
        try:
            verify_signature(run.path, public_key=public_key)
            return SignResult(run.path, run.path / SIGNATURE, 0, already_signed=True)
        except IntegrityError:
            pass
    report = verify_run(run.path)
    if not report.ok:
        raise IntegrityError(run.path, report.problems)  # never sign what no longer matches its record
    links = sorted(p for p in run.path.rglob("*") if p.is_symlink())
    if links:
        raise UnsafeInputError(str(links[0]), "is a symbolic link inside the run: model-signing signs files, not "
                                              "links, and refuses a run that holds one", hint="remove it, or "
                                              "replace it with the file it points to, then sign again")
    signer = _signer(key)  # a key model-signing cannot use is refused before anything is written
    with run.stage("sign-lineage", parameters={"of": "every stage that made the run's artifacts"}) as st:
        st.write_output_text(LINEAGE, json.dumps(lineage(run.manifest), indent=2, sort_keys=True) + "\n")
    # model-signing signs the files as they lie in the run, so the lineage file is committed (by a stage of its
    # own, which lineage() leaves out) before it is signed. "sign" is recorded only once the bundle exists.
    signature = run.path / SIGNATURE
    with run.stage("sign", parameters={"format": "OpenSSF model-signing (in-toto in a Sigstore bundle)",
                                       "key": "local EC key (offline)", "signature": str(SIGNATURE)}) as st:
        st.add_input(run.path / LINEAGE)
        _write_signature(run.path, signer, signature)
    return SignResult(run.path, signature, len(_signed_files(signature)))


def _signer(key: Path):
    """model-signing's signing configuration for a local EC key (which it loads here)."""
    _, signing, _ = _model_signing()
    try:
        return signing.Config().use_elliptic_key_signer(private_key=key, password=None)
    except (ValueError, TypeError) as exc:  # cryptography's words for a key it cannot load
        raise InputFileError(key, f"model-signing cannot sign with this key: {first_line(exc)}",
                             hint="make a key pair with: packager keygen DIR") from None


def _write_signature(run_dir: Path, signer, signature: Path) -> None:
    """model-signing's bundle over every artifact, written beside the run (signatures/ is not an artifact: it
    is excluded from what it signs), replacing the previous one only when complete."""
    hashing, _, _ = _model_signing()
    signature.parent.mkdir(exist_ok=True)
    tmp = signature.with_name(".run.sig.partial")
    config = hashing.Config().set_ignored_paths(paths=IGNORED, ignore_git_paths=False)
    try:
        signer.set_hashing_config(config).sign(run_dir, tmp)
        atomic_write_bytes(signature, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)


def _signed_files(signature: Path) -> list[str]:
    import base64

    bundle = json.loads(signature.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    return [r["name"] for r in statement["predicate"]["resources"]]


def verify_signature(run_dir: Path | str, *, public_key: Path | str) -> int:
    """Check the signature over every artifact and that the manifest still says what was signed.

    Returns the number of signed files. Raises IntegrityError naming what differs.
    """
    run_dir = Path(run_dir)
    signature = run_dir / SIGNATURE
    if not signature.is_file():
        raise MissingPathError(signature, "the run is not signed", hint=f"sign it: packager sign {run_dir} --key KEY")
    if not Path(public_key).is_file():
        raise MissingPathError(public_key, "public key not found")
    _, _, verifying = _model_signing()
    from cryptography.exceptions import InvalidSignature

    try:
        verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key)).verify(run_dir, signature)
    except ValueError as exc:
        raise IntegrityError(run_dir, [f"signature: {_readable(str(exc))}"]) from None
    except InvalidSignature:
        raise IntegrityError(run_dir, [f"signature: {signature} was altered (its signature does not match "
                                       "its contents)"]) from None
    signed = json.loads((run_dir / LINEAGE).read_text())
    current = lineage(read_manifest(run_dir))
    changed = sorted(set(signed) ^ set(current) | {k for k in set(signed) & set(current) if signed[k] != current[k]})
    if changed:
        raise IntegrityError(run_dir, [f"manifest.json: stage {name!r} differs from what was signed"
                                       for name in changed])
    return len(_signed_files(signature))


def _readable(message: str) -> str:
    """model-signing prints digests as raw bytes; keep the file names, drop the bytes."""
    import re

    return re.sub(r": Expected 'Digest\(.*?\)', Actual 'Digest\(.*?\)'", " (sha256 differs)", message)

"""Stage ``export-safetensors``: the merged checkpoint as published, with a model card."""

from __future__ import annotations

import shutil
from pathlib import Path

from packager.config import ExportConfig, parse_size
from packager.models.checkpoint import inspect_checkpoint
from packager.models.safetensors_stream import read_tensor, write_sharded
from packager.models.stop_tokens import generation_stop_ids
from packager.publish.card import render_model_card
from packager.run.artifacts import merged_model_dir
from packager.run.directory import Run, StageWriter
from packager.run.hashing import HashingWriter
from packager.stages.export.result import ExportResult
from packager.stages.merge.plan import read_base_layout


STAGE = "export-safetensors"


def export_safetensors(run: Run, export_cfg: ExportConfig, *, shard_size: str | None = None) -> ExportResult:
    """Copy (or re-shard) the merged files into ``export/safetensors``, hashed while copying, and add the card."""
    merged = merged_model_dir(run)
    with run.stage(STAGE, parameters={"shard_size": shard_size}) as st:
        files = sorted(p for p in merged.iterdir() if p.is_file())
        for file in files:
            st.add_input(file)
        out = st.output_dir("export/safetensors")
        if shard_size:
            _reshard(merged, out, shard_size=shard_size, stage=st)
        for file in files:
            if shard_size and (file.name.endswith(".safetensors") or file.name.endswith(".index.json")):
                continue
            with open(file, "rb") as src, open(out / file.name, "wb") as dst:
                writer = HashingWriter(dst)
                shutil.copyfileobj(src, writer, 4 << 20)  # hashed while copying: read once
            st.known_digest(out / file.name, writer.digest())
        listed = [{"path": p.name, "size": p.stat().st_size, "sha256": st.digest_of(p).sha256}
                  for p in sorted(out.iterdir())]
        card = render_model_card(run, kind="merged", files=listed, license_cfg=export_cfg,
                                 stop_ids=generation_stop_ids(merged))
        (out / "README.md").write_text(card)
    return ExportResult(run.path, sorted((run.path / "export" / "safetensors").iterdir()), {}, {})


def _reshard(merged: Path, out: Path, *, shard_size: str, stage: StageWriter) -> None:
    layout = read_base_layout(inspect_checkpoint(merged))
    digests = write_sharded(out, list(layout.specs.values()), lambda spec: read_tensor(layout, spec.name),
                            max_bytes=parse_size(shard_size))
    for name, digest in digests.items():
        stage.known_digest(out / name, digest)

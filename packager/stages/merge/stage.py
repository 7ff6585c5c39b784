"""Stage ``merge``: a run's adapter (or one trained elsewhere) streamed into ``RUN/merged`` and verified.

A run made from an adapter trained elsewhere (``packager merge --adapter``) has no train stage: its merge
record holds the settings every later stage reads (:func:`packager.run.settings.recorded_config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from packager.config import BaseModelConfig, MergeConfig, PackagerConfig, RunConfig, parse_size
from packager.errors import StageError
from packager.models.adapter import ADAPTER_FILES, Adapter, read_adapter
from packager.models.checkpoint import TOKENIZER_FILES, Checkpoint, record_base, resolve_base
from packager.models.golden import golden_questions
from packager.names import HUB_ID, validate_name
from packager.run.directory import Run
from packager.run.settings import recorded_config
from packager.stages.data.split import read_split
from packager.stages.merge.stream import stream_merge
from packager.stages.merge.verify import FALLBACK_PROMPTS, verify_merge


STAGE = "merge"


@dataclass
class MergeResult:
    run_dir: Path
    merged_dir: Path
    verification: dict
    already_done: bool = False

    def summary(self) -> str:
        v = self.verification
        return (f"merged -> {self.merged_dir}\n"
                f"verified on {v['prompts']} prompts ({v['positions']} positions): greedy agreement "
                f"{v['greedy_agreement']:.4f}, logits max |diff| {v['max_abs']:.4g}, mean {v['mean_abs']:.4g} "
                f"vs base+adapter; mean {v['mean_abs_vs_base']:.4g} vs the base (adapter effect "
                f"{v['adapter_effect_mean_abs']:.4g})")


def _base_matches_recorded(run: Run, ckpt: Checkpoint) -> None:
    """The base we merge onto must be byte-identical to the one the adapter was trained on."""
    train = run.manifest.stages.get("train")
    if train is None:
        return
    recorded = {Path(i.path).name: i.sha256 for i in train.inputs if Path(i.path).is_absolute()}
    for file in ckpt.weights + ckpt.config:
        if file.name in recorded and run.digest(file).sha256 != recorded[file.name]:
            raise StageError("merge", f"the base at {ckpt.path} is not the one this adapter was trained on: "
                                      f"{file.name} has sha256 {run.digest(file).sha256[:12]}…, the run recorded "
                                      f"{recorded[file.name][:12]}…",
                             hint="point base.model at the original base checkpoint")


def merge_into_run(run: Run, cfg: PackagerConfig, *, ckpt: Checkpoint, adapter_dir: Path, dtype: str,
                   conversations: list[list[dict]], method: str, record_config: bool = False) -> MergeResult:
    """Stage ``merge``: stream-merge into RUN/merged, verify, record digests (hashed while writing).

    ``record_config``: the run has no train stage, so the merge record carries the run's settings.
    """
    adapter = read_adapter(adapter_dir)
    shard_bytes = parse_size(cfg.merge.shard_size)
    parameters = {"dtype": dtype, "shard_bytes": shard_bytes, "method": method}
    if record_config:
        parameters["config"] = cfg.model_dump(mode="json")
    with run.stage(STAGE, parameters=parameters) as st:
        record_base(st, ckpt, cfg.base)
        for name in ADAPTER_FILES + TOKENIZER_FILES:
            if (adapter_dir / name).is_file():
                st.add_input(adapter_dir / name)
        out = st.output_dir("merged")
        merged = stream_merge(ckpt, adapter, out, dtype=dtype, shard_bytes=shard_bytes)
        for name, digest in merged.digests.items():
            st.known_digest(out / name, digest)
        verification, golden = verify_merge(ckpt.path, adapter_dir, out, conversations=conversations, dtype=dtype,
                                            stop_ids=merged.stop_ids)
        scales = sorted({round(m.scale, 6) for m in adapter.modules.values()})
        st.parameters.update({
            "base_weights": "original 16-bit safetensors of the base (never dequantized 4-bit)",
            "qlora": method == "qlora", "scales": scales, "rslora": bool(adapter.config.get("use_rslora")),
            "dora": any(m.magnitude_key for m in adapter.modules.values()),
            "lora_modules": len(adapter.modules), "replaced_tensors": sorted(adapter.replacements),
            "untied_lm_head": merged.untied_lm_head, "vocab_size": merged.vocab_size,
            "adapter_base": adapter.config.get("base_model_name_or_path")})
        st.metrics["verification"] = verification
        st.metrics["golden"] = golden
    return MergeResult(run.path, run.path / "merged", verification)


def merge_run(run_dir: Path | str, *, dtype: str | None = None) -> MergeResult:
    """``packager merge RUN``: merge the run's adapter onto the base it was trained on."""
    run = Run.open(run_dir)
    cfg = recorded_config(run)
    adapter_dir = run.path / "train" / "adapter"
    if not adapter_dir.is_dir():
        raise StageError("merge", f"{run.path} has no adapter to merge (a full fine-tune is already merged: "
                                  f"{run.path / 'train' / 'model'})")
    ckpt = resolve_base(cfg.base)
    _base_matches_recorded(run, ckpt)
    eval_file = run.path / "data" / "eval.jsonl"
    conversations = read_split(eval_file)[: cfg.merge.verify_prompts] if eval_file.is_file() else []
    return merge_into_run(run, cfg, ckpt=ckpt, adapter_dir=adapter_dir, dtype=dtype or cfg.merge.dtype,
                          method=cfg.train.method, conversations=conversations or FALLBACK_PROMPTS)


def merge_external(adapter_dir: Path | str, base_model: str, out_dir: Path | str, *, dtype: str = "bfloat16",
                   shard_size: str = "2GB", hub_id: str | None = None) -> MergeResult:
    """``packager merge --adapter DIR --base MODEL --out RUN``: an adapter trained elsewhere.

    The run records the base (``hub_id`` names it in model cards when ``base_model`` is a local directory)
    and the merge settings, which export, containerize, smoke and push then read from the merge record.
    """
    base_cfg = BaseModelConfig(model=base_model, hub_id=hub_id)
    ckpt = resolve_base(base_cfg)
    adapter_dir = Path(adapter_dir)
    _refuse_named_mismatch(read_adapter(adapter_dir), ckpt)
    out_dir = Path(out_dir)
    cfg = PackagerConfig(run=RunConfig(name=validate_name(out_dir.name, what="run name"),
                                       root=out_dir.parent.resolve()),
                         base=base_cfg, merge=MergeConfig(dtype=dtype, shard_size=shard_size))
    run = Run.create(out_dir)
    return merge_into_run(run, cfg, ckpt=ckpt, adapter_dir=adapter_dir, dtype=dtype, method="lora",
                          conversations=FALLBACK_PROMPTS, record_config=True)


def _refuse_named_mismatch(adapter: Adapter, ckpt: Checkpoint) -> None:
    """When both the adapter's recorded base and ours are Hub ids, they must be the same model."""
    named = adapter.config.get("base_model_name_or_path") or ""
    ours = ckpt.hub_id or ""
    if HUB_ID.fullmatch(named) and HUB_ID.fullmatch(ours) and named.lower() != ours.lower():
        raise StageError("merge", f"the adapter at {adapter.path} was trained on {named}, not on {ours}",
                         hint="merge onto the base model the adapter was trained on")


def recorded_golden_tokens(run: Run, model_dir: Path, conversations: list[list[dict]]) -> list[list[int]] | None:
    """The merged model's greedy answers to the parity questions as the merge stage recorded them, if they
    are answers to these very questions by these very files (else None, and they are generated again)."""
    merge = run.manifest.stages.get(STAGE)
    if merge is None or model_dir != run.path / "merged" or not run.outputs_intact(STAGE):
        return None
    golden = merge.metrics.get("golden") or []
    if [g["messages"] for g in golden] != golden_questions(conversations):
        return None
    return [g["tokens"] for g in golden]

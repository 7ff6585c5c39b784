"""Training: LoRA, QLoRA or full fine-tuning with TRL's SFTTrainer and PEFT, configured in plain sight.

The flow is explicit: resolve the base, check and split the data into the run
(stage ``data``), pick a backend with one visible rule, build the model,
train with checkpoints in the run's working area (so ``--resume`` continues
after a kill), then record the adapter or weights, logs, samples and a report
atomically (stage ``train``). Training goes through Accelerate, so
``accelerate launch -m packager.cli train ...`` runs it on several processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from packager.config import PackagerConfig
from packager.errors import StageError, first_line, is_out_of_memory
from packager.models.checkpoint import Checkpoint, read_context_limit, record_base, resolve_base
from packager.models.tokenizer import load_tokenizer
from packager.run.directory import Run
from packager.stages.data.masks import tokenize_with_assistant_mask
from packager.stages.data.split import prepare_data, read_split, read_split_tools
from packager.stages.train.report import write_training_report
from packager.stages.train.backend import Backend, choose_backend, import_unsloth_first
from packager.stages.train.callbacks import make_callbacks, quiet_progress
from packager.stages.train.checkpoints import interrupted, last_complete_checkpoint, resume_point, working_dir
from packager.stages.train.distributed import distributed_metrics, gathered_state_dict, refuse_unavailable_sharding
from packager.stages.train.model import load_model
from packager.stages.train.packing import keeps_packed_rows, packed_rows_trainer


DRY_RUN_ROWS = 16
DRY_RUN_STEPS = 3


def tokenized_dataset(conversations: list[list[dict]], tokenizer, tools: list[list[dict] | None] | None = None):
    """Pre-tokenized rows with an assistant mask; TRL turns the mask into -100 labels. ``tools``: each row's
    tools, rendered by the template as it renders them at inference (``apply_chat_template(tools=...)``)."""
    from datasets import Dataset

    tools = tools or [None] * len(conversations)
    return Dataset.from_list([tokenize_with_assistant_mask(tokenizer, c, t) for c, t in zip(conversations, tools)])


def sft_config(cfg: PackagerConfig, *, output_dir: Path, backend: Backend, max_steps: int | None,
               dry_run: bool, train_rows: int, world_size: int = 1):
    from trl import SFTConfig

    t = cfg.train
    steps = DRY_RUN_STEPS if dry_run else (max_steps or t.max_steps or -1)
    planned = steps if steps > 0 else math.ceil(
        t.epochs * math.ceil(train_rows / (t.batch_size * t.gradient_accumulation * world_size)))
    eval_steps = max(1, min(t.eval_steps, planned))  # short runs still evaluate (and keep a best checkpoint)
    return SFTConfig(
        output_dir=str(output_dir),
        learning_rate=t.resolved_learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        num_train_epochs=t.epochs,
        max_steps=steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=1,
        report_to="none",
        seed=t.seed,
        data_seed=t.seed,
        max_length=cfg.training_data.max_seq_length,
        packing=t.packing,  # TRL's best-fit packing; the batches are shaped by packed_batches()
        bf16=backend.bf16,
        use_cpu=backend.device == "cpu",
        include_num_input_tokens_seen="non_padding",
        gradient_checkpointing=backend.device == "cuda",  # TRL turns it on by default; on CPU it only costs time
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict

    def summary(self) -> str:
        m = self.metrics
        best = "no evaluation ran" if m["eval_loss_best"] is None else \
            f"best eval loss {m['eval_loss_best']:.4f} at {m['best_checkpoint']}"
        return (f"trained {m['global_step']} steps on {m['device']} ({m['backend']}: {m['backend_reason']}; "
                f"{m['precision']}); {best}; {m['tokens_per_second']} tokens/s, {m['seconds_per_step']} s/step "
                f"({m['step_tokens_per_second']} tokens/s in the training steps; evaluation {m['eval_seconds']} s, "
                f"samples {m['sample_seconds']} s)\n"
                f"run: {self.run_dir} (report: {self.run_dir / 'train' / 'report.html'})")


def train_model(cfg: PackagerConfig, *, dry_run: bool = False, resume: bool = False,
                max_steps: int | None = None) -> TrainResult:
    """Run the data and train stages for ``cfg`` into ``cfg.run_dir``."""
    backend = choose_backend(cfg.train.backend)  # first: Unsloth must come before transformers, TRL and PEFT
    late = import_unsloth_first() if backend.name == "unsloth" else []
    if late:  # packager as a library, in a process that had imported them: recorded with the run
        backend = dataclasses.replace(backend, reason=f"{backend.reason}; Unsloth imported after "
                                                      f"{', '.join(late)}, so not all its patches apply")
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # else CPU ranks each think they are alone
    refuse_unavailable_sharding(state)
    ckpt = resolve_base(cfg.base)
    prepared = load_tokenizer(ckpt.path, chat_template=cfg.base.chat_template,
                              system_policy=cfg.training_data.system_policy,
                              trust_remote_code=cfg.base.trust_remote_code)
    run = Run.create(cfg.run_dir, name=cfg.run.name) if state.is_main_process else None
    # The whole stage holds the run: a second `packager train` on it had cleared this one's live checkpoints.
    with run.hold() if run is not None else contextlib.nullcontext():
        return _train_holding(run, cfg, ckpt, prepared, state, backend, dry_run=dry_run, resume=resume,
                              max_steps=max_steps)


def _train_holding(run: Run | None, cfg: PackagerConfig, ckpt: Checkpoint, prepared, state, backend: Backend, *,
                   dry_run: bool, resume: bool, max_steps: int | None) -> TrainResult:
    """The data and train stages, with the run held (``run`` is None in the other processes of a DDP run)."""
    work = working_dir(cfg.run_dir)
    if state.is_main_process:
        _prepare(run, cfg, ckpt, prepared.tokenizer, work=work, resume=resume)
    state.wait_for_everyone()

    trainer = _trainer(cfg, ckpt, backend, prepared.tokenizer, work=work, max_steps=max_steps, dry_run=dry_run,
                       world_size=state.num_processes)
    last = resume_point(work / "checkpoints") if resume else None
    start_step = int(last.name.split("-")[1]) if last else 0
    started = time.perf_counter()
    _train(trainer, resume_from=last, work=work, device=backend.device)
    seconds = time.perf_counter() - started
    state.wait_for_everyone()
    metrics = training_metrics(trainer, seconds=seconds, steps=trainer.state.global_step - start_step,
                               backend=backend, dry_run=dry_run, world_size=state.num_processes)
    metrics["resumed_from_step"] = start_step if resume else None
    metrics.update(distributed_metrics(trainer.accelerator))
    state_dict = gathered_state_dict(trainer)  # every process: under FSDP a collective
    if state.is_main_process:
        record_training(run, cfg, ckpt, trainer=trainer, tokenizer=prepared, metrics=metrics, work=work,
                        state_dict=state_dict)
    return TrainResult(cfg.run_dir, metrics)


def _prepare(run: Run, cfg: PackagerConfig, ckpt: Checkpoint, tokenizer, *, work: Path, resume: bool) -> None:
    """Main process only: check and split the data into the run, and clear (or keep, to resume) the work area."""
    model_max = read_context_limit(ckpt.path)
    prepare_data(run, cfg.training_data, tokenizer=tokenizer, model_max=model_max)
    if resume and last_complete_checkpoint(work / "checkpoints") is None:
        raise StageError("train", f"--resume: no checkpoint in {work / 'checkpoints'} to resume from",
                         hint="run without --resume to start from step 0")
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)


def _trainer(cfg: PackagerConfig, ckpt: Checkpoint, backend: Backend, tokenizer, *, work: Path,
             max_steps: int | None, dry_run: bool, world_size: int):
    """The TRL trainer over the recorded split, with packager's callbacks and progress bar."""
    from transformers.trainer_callback import ProgressCallback
    from trl import SFTTrainer

    data = cfg.run_dir / "data"
    train_rows, eval_rows = read_split(data / "train.jsonl"), read_split(data / "eval.jsonl")
    train_tools, eval_tools = read_split_tools(data / "train.jsonl"), read_split_tools(data / "eval.jsonl")
    if dry_run:
        train_rows, eval_rows = train_rows[:DRY_RUN_ROWS], eval_rows[:max(2, DRY_RUN_ROWS // 4)]
    model, peft_config = load_model(ckpt, cfg, backend, tokenizer)
    args = sft_config(cfg, output_dir=work / "checkpoints", backend=backend, max_steps=max_steps, dry_run=dry_run,
                      train_rows=len(train_rows), world_size=world_size)
    trainer_class = packed_rows_trainer() if keeps_packed_rows(args, model) else SFTTrainer
    trainer = trainer_class(model=model, args=args, train_dataset=tokenized_dataset(train_rows, tokenizer, train_tools),
                            eval_dataset=tokenized_dataset(eval_rows, tokenizer, eval_tools),
                            processing_class=tokenizer,
                            peft_config=peft_config,
                            callbacks=make_callbacks(cfg, tokenizer=tokenizer, eval_conversations=eval_rows,
                                                     eval_tools=eval_tools, samples_file=work / "samples.jsonl",
                                                     dry_run=dry_run))
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(quiet_progress())
    return trainer


def _train(trainer, *, resume_from: Path | None, work: Path, device: str) -> None:
    """``trainer.train()``, with Ctrl-C and out-of-memory turned into what the user can do next."""
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except KeyboardInterrupt:
        raise interrupted(work / "checkpoints") from None
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError subclasses RuntimeError
        if is_out_of_memory(exc):
            raise StageError("train", f"out of memory on {device} ({first_line(exc)})",
                             hint="lower train.batch_size (raise gradient_accumulation to compensate), lower "
                                  "data.max_seq_length, or use train.method: qlora") from None
        raise


def sort_target_modules(adapter_config: Path) -> None:
    """PEFT saves target_modules, a set, in string-hash order, which differs between processes: two identical
    runs wrote different adapter_config.json bytes (and digests). Sorted, the same run gives the same file."""
    if not adapter_config.is_file():
        return  # a full fine-tune has no adapter
    config = json.loads(adapter_config.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True))


def training_metrics(trainer, *, seconds: float, steps: int, backend: Backend, dry_run: bool,
                     world_size: int) -> dict:
    st = trainer.state
    losses = [e["loss"] for e in st.log_history if "loss" in e]
    evals = [e["eval_loss"] for e in st.log_history if "eval_loss" in e]
    # Evaluations and sample generations of this process (a resumed run's log holds the earlier ones too),
    # so the throughput of the training steps themselves can be compared with a trainer that does neither.
    eval_seconds = sum(e["eval_runtime"] for e in st.log_history
                       if "eval_runtime" in e and e.get("step", 0) > st.global_step - steps)
    sample_seconds = sum(getattr(cb, "generating_seconds", 0.0) for cb in trainer.callback_handler.callbacks)
    step_seconds = max(seconds - eval_seconds - sample_seconds, 1e-9)
    return {
        "backend": backend.name, "backend_reason": backend.reason, "device": backend.device,
        "precision": backend.precision,
        "world_size": world_size, "dry_run": dry_run, "global_step": st.global_step,
        "train_loss_first": losses[0] if losses else None, "train_loss_last": losses[-1] if losses else None,
        "eval_loss_best": st.best_metric, "eval_losses": evals,
        "eval_perplexity_best": math.exp(st.best_metric) if st.best_metric is not None else None,
        "best_checkpoint": Path(st.best_model_checkpoint).name if st.best_model_checkpoint else None,
        "tokens_seen": st.num_input_tokens_seen, "train_seconds": round(seconds, 2),
        "tokens_per_second": round(st.num_input_tokens_seen / seconds, 1) if seconds else None,
        "seconds_per_step": round(seconds / max(1, steps), 3),
        "eval_seconds": round(eval_seconds, 2), "sample_seconds": round(sample_seconds, 2),
        "step_seconds": round(step_seconds, 2),
        "step_tokens_per_second": round(st.num_input_tokens_seen / step_seconds, 1) if seconds else None,
    }


def record_training(run: Run, cfg: PackagerConfig, ckpt: Checkpoint, *, trainer, tokenizer, metrics: dict,
                    work: Path, state_dict: dict | None = None) -> None:
    """Stage ``train``: adapter (or full weights) + tokenizer, logs, samples, resolved config, report.
    ``state_dict``: the whole model's, gathered from FSDP shards (:func:`gathered_state_dict`)."""
    parameters = {"method": cfg.train.method, "backend": metrics["backend"],
                  "backend_reason": metrics["backend_reason"], "config": cfg.model_dump(mode="json"),
                  "chat_template_source": tokenizer.chat_template_source, "tokenizer_notes": tokenizer.notes}
    with run.stage("train", parameters=parameters) as st:
        record_base(st, ckpt, cfg.base)
        for name in ("train.jsonl", "eval.jsonl"):
            st.add_input(run.path / "data" / name)
        out = st.output_dir("train")
        weights_dir = out / ("model" if cfg.train.method == "full" else "adapter")
        if state_dict is None:
            trainer.model.save_pretrained(weights_dir, safe_serialization=True)
        else:
            trainer.accelerator.unwrap_model(trainer.model).save_pretrained(weights_dir, safe_serialization=True,
                                                                            state_dict=state_dict)
        sort_target_modules(weights_dir / "adapter_config.json")
        tokenizer.tokenizer.save_pretrained(weights_dir)
        (weights_dir / "README.md").unlink(missing_ok=True)  # PEFT's stub card names a local path; cards come later
        (out / "log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        (out / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
        samples = work / "samples.jsonl"
        if samples.exists():
            shutil.copy(samples, out / "samples.jsonl")
        write_training_report(out, run_name=cfg.run.name, log_history=trainer.state.log_history,
                              samples_file=out / "samples.jsonl", metrics=metrics)
        st.metrics.update(metrics)

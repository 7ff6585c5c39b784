"""Training: LoRA, QLoRA or full fine-tuning with TRL's SFTTrainer and PEFT, configured in plain sight.

The flow is explicit: resolve the base, check and split the data into the run
(stage ``data``), pick a backend with one visible rule, build the model,
train with checkpoints in the run's working area (so ``--resume`` continues
after a kill), then record the adapter or weights, logs, samples and a report
atomically (stage ``train``). Training goes through Accelerate, so
``accelerate launch -m packager.cli train ...`` runs it on several processes.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from packager.models.checkpoint import Checkpoint, record_base, resolve_base
from packager.config import PackagerConfig
from packager.data import prepare_data, read_split, tokenize_with_assistant_mask
from packager.models.inference import greedy_answers
from packager.errors import DependencyMissingError, InterruptedStageError, StageError
from packager.run.directory import Run
from packager.run.manifest import STATE_DIR
from packager.models.tokenizer import load_tokenizer

DRY_RUN_ROWS = 16
DRY_RUN_STEPS = 3
SAMPLE_PROMPTS = 3
SAMPLE_MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class Backend:
    name: str  # "trl" or "unsloth"
    reason: str
    device: str  # "cuda" or "cpu"
    bf16: bool = False  # compute in bfloat16 (CUDA devices that have it)
    precision: str = "float32"  # what was chosen and why, recorded with the run


def compute_precision(device: str) -> tuple[bool, str]:
    """bfloat16 on a CUDA device that has it, float32 elsewhere, and why (recorded with the run).

    A CPU stays in float32 even with AMX: bfloat16 autocast trained SmolLM2-135M no faster here (float32
    176 / 176 tokens/s, bf16 167 / 203 interleaved, on 2 cores with AMX and AVX512-BF16, though a bare bf16
    matmul ran 3.8x faster), and it
    rounds what the merge and the golden answers are then compared against.
    """
    import torch

    if device == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, "bfloat16 (CUDA device supports it)"
        return False, "float32 (this CUDA device has no bfloat16)"
    return False, "float32 (CPU)"


def choose_backend(requested: str) -> Backend:
    """unsloth on CUDA when installed (or forced); the plain TRL path otherwise. Says why."""
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    bf16, precision = compute_precision(device)
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested == "unsloth":
        if not cuda:
            raise StageError("train", "train.backend is 'unsloth' but no CUDA device is available",
                             hint="set train.backend: auto (or trl) to train on this machine")
        if not has_unsloth:
            raise DependencyMissingError("unsloth", "for train.backend: unsloth", install="pip install 'packager[gpu]'")
        return Backend("unsloth", "forced by train.backend", device, bf16, precision)
    if requested == "trl":
        return Backend("trl", "forced by train.backend", device, bf16, precision)
    if cuda and has_unsloth:
        return Backend("unsloth", "auto: CUDA device and unsloth installed", device, bf16, precision)
    reason = "auto: " + ("unsloth not installed" if cuda else "no CUDA device")
    return Backend("trl", reason, device, bf16, precision)


def working_dir(run_dir: Path) -> Path:
    """Checkpoints and in-progress samples: hidden state of the run, kept for --resume, never an output."""
    return Path(run_dir) / STATE_DIR / "train-work"


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint a kill did not cut short (the trainer writes trainer_state.json last)."""
    complete = [p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def resume_point(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint with steps left to train, where ``--resume`` continues.

    A kill can land after the final checkpoint but before the run is recorded. The Trainer resumed from a
    checkpoint already at max_steps takes one step more than the uninterrupted run did, so an earlier
    checkpoint redoes the last steps instead. A trainer_state.json cut short by the kill does not count.
    """
    for path in sorted(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]), reverse=True):
        try:
            state = json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        if state.get("global_step", 0) < state.get("max_steps", 0):
            return path
    return None


# ---------------------------------------------------------------- model

def load_model(ckpt: Checkpoint, cfg: PackagerConfig, backend: Backend, tokenizer):
    """The model to train, with LoRA attached for lora/qlora. Returns (model, peft_config or None)."""
    if backend.name == "unsloth":
        return _load_unsloth(ckpt, cfg), None
    import torch
    from transformers import AutoModelForCausalLM

    train = cfg.train
    dtype = torch.bfloat16 if backend.device == "cuda" and backend.bf16 else torch.float32
    kwargs: dict = {"dtype": dtype, "trust_remote_code": cfg.base.trust_remote_code}
    if train.method == "qlora":
        kwargs["quantization_config"] = _nf4_config(dtype)
        kwargs["device_map"] = {"": 0} if backend.device == "cuda" else {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(ckpt.path, **kwargs)
    except (ValueError, KeyError) as exc:
        if "Unrecognized" in str(exc) or "model_type" in str(exc) or isinstance(exc, KeyError):
            raise StageError("train", f"unknown model architecture {ckpt.architecture!r} in {ckpt.path}: "
                                      f"{str(exc).splitlines()[0]}",
                             hint="upgrade transformers, or set base.trust_remote_code: true if you trust "
                                  "the model's own code") from None
        raise
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if train.method == "full":
        return model, None
    if train.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, lora_config(cfg)


def _nf4_config(compute_dtype):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise DependencyMissingError("bitsandbytes", "for train.method: qlora", install="pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def lora_config(cfg: PackagerConfig):
    from peft import LoraConfig

    lora = cfg.train.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha or lora.r, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, use_rslora=lora.use_rslora, use_dora=lora.use_dora,
                      bias="none", task_type="CAUSAL_LM")


def _load_unsloth(ckpt: Checkpoint, cfg: PackagerConfig):
    """Unsloth's fast path on CUDA. Unsloth wants explicit module names, so all-linear is spelled out."""
    from unsloth import FastLanguageModel  # noqa: I001  (unsloth must be imported before transformers)

    lora = cfg.train.lora
    model, _ = FastLanguageModel.from_pretrained(model_name=str(ckpt.path), max_seq_length=cfg.data.max_seq_length,
                                                 load_in_4bit=cfg.train.method == "qlora",
                                                 full_finetuning=cfg.train.method == "full")
    if cfg.train.method == "full":
        return model
    targets = lora.target_modules if lora.target_modules != "all-linear" else [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return FastLanguageModel.get_peft_model(model, r=lora.r, lora_alpha=lora.alpha or lora.r,
                                            lora_dropout=lora.dropout, target_modules=targets,
                                            use_rslora=lora.use_rslora, random_state=cfg.train.seed)


# ---------------------------------------------------------------- data

def tokenized_dataset(conversations: list[list[dict]], tokenizer):
    """Pre-tokenized rows with an assistant mask; TRL turns the mask into -100 labels."""
    from datasets import Dataset

    return Dataset.from_list([tokenize_with_assistant_mask(tokenizer, c) for c in conversations])


# ---------------------------------------------------------------- trainer

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
        max_length=cfg.data.max_seq_length,
        packing=t.packing,  # TRL's best-fit packing; the batches are shaped by packed_batches()
        bf16=backend.bf16,
        use_cpu=backend.device == "cpu",
        include_num_input_tokens_seen="non_padding",
        gradient_checkpointing=backend.device == "cuda",  # TRL turns it on by default; on CPU it only costs time
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def keeps_packed_rows(args, model) -> bool:
    """With ``train.packing``, whether each packed row stays its own row of the batch.

    TRL's packing makes its batches padding-free: the whole batch flattened into one row of
    ``batch_size x max_length`` tokens. That costs nothing extra only with flash-attention's varlen
    kernels. Under SDPA or eager attention (every CPU, and CUDA without flash-attn) the model builds a
    block-diagonal mask over the whole flattened row, so attention work and memory grow with
    ``(batch_size x max_length)^2`` instead of ``batch_size x max_length^2``: slower than not packing.
    There the batch stays ``[batch_size, max_length]``, with position ids restarting at each packed
    sequence, from which transformers builds the same per-sequence mask row by row.
    """
    impl = getattr(model.config, "_attn_implementation", None) or ""
    return bool(args.packing) and not impl.startswith("flash_attention")


def packed_rows_collator(pad_token_id: int):
    """Batches of TRL-packed rows (``input_ids``, ``labels``, ``seq_lengths``) as ``[rows, longest]``, with
    position ids per sequence. The attention mask only marks padding, for the Trainer's token count;
    :func:`for_the_model` takes it away before the forward pass."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    class PackedRows(DataCollatorForLanguageModeling):
        def torch_call(self, examples):
            batch = super().torch_call(examples)
            batch["labels"][batch["position_ids"] == 0] = -100  # never predict a sequence from the one before
            return batch

    return PackedRows(pad_token_id=pad_token_id, return_position_ids=True)


def for_the_model(inputs: dict) -> dict:
    """A packed-rows batch as the model takes it: without the mask, which would hide the sequence
    boundaries in the position ids (transformers derives per-sequence masks only when there is none)."""
    return {k: v for k, v in inputs.items() if k != "attention_mask"}


def packed_rows_trainer():
    """SFTTrainer with :func:`packed_rows_collator` batches (TRL refuses a collator of its own with packing)."""
    from trl import SFTTrainer

    class PackedRowsTrainer(SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.data_collator = packed_rows_collator(self.processing_class.pad_token_id)

        def compute_loss(self, model, inputs, *args, **kwargs):
            return super().compute_loss(model, for_the_model(inputs), *args, **kwargs)

    return PackedRowsTrainer


def make_callbacks(cfg: PackagerConfig, *, tokenizer, eval_conversations, samples_file: Path, dry_run: bool):
    from transformers import EarlyStoppingCallback, TrainerCallback

    prompts = [c[:-1] for c in eval_conversations[:SAMPLE_PROMPTS]]
    every = 1 if dry_run else cfg.train.sample_every

    class SampleGenerations(TrainerCallback):
        """Greedy answers to fixed eval prompts every N steps, so format collapse is visible in the run."""

        generating_seconds = 0.0  # spent generating, reported apart from the training steps' time

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero and state.global_step % every == 0:
                self._sample(state.global_step, model)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero:
                self._sample(state.global_step, model, final=True)

        def _sample(self, step: int, model, final: bool = False) -> None:
            started = time.perf_counter()
            answers = greedy_answers(model, tokenizer, prompts, max_new_tokens=SAMPLE_MAX_NEW_TOKENS)
            self.generating_seconds += time.perf_counter() - started
            with open(samples_file, "a", encoding="utf-8") as f:
                for prompt, answer in zip(prompts, answers):
                    f.write(json.dumps({"step": step, "final": final, "prompt": prompt[-1]["content"],
                                        "answer": answer}, ensure_ascii=False) + "\n")

    callbacks = [SampleGenerations()]
    if cfg.train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    return callbacks


def quiet_progress():
    """The step bar with the latest losses as its postfix, in place of a printed dict for every logged step
    (every log entry is still in train/log.json). Replaces transformers' ProgressCallback."""
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs:
                shown = {k: f"{logs[k]:.4f}" for k in ("loss", "eval_loss") if isinstance(logs.get(k), float)}
                if shown:
                    self.training_bar.set_postfix(shown, refresh=False)

    return QuietProgress()


# ---------------------------------------------------------------- the stage

@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict


def train_model(cfg: PackagerConfig, *, dry_run: bool = False, resume: bool = False,
                max_steps: int | None = None) -> TrainResult:
    """Run the data and train stages for ``cfg`` into ``cfg.run_dir``."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # else CPU ranks each think they are alone
    ckpt = resolve_base(cfg.base)
    prepared = load_tokenizer(ckpt.path, chat_template=cfg.base.chat_template,
                              trust_remote_code=cfg.base.trust_remote_code)
    tokenizer = prepared.tokenizer
    run = Run.create(cfg.run_dir, name=cfg.run.name) if state.is_main_process else None
    work = working_dir(cfg.run_dir)
    if state.is_main_process:
        model_max = json.loads((ckpt.path / "config.json").read_text()).get("max_position_embeddings")
        prepare_data(run, cfg.data, tokenizer=tokenizer, model_max=model_max)
        if resume and last_complete_checkpoint(work / "checkpoints") is None:
            raise StageError("train", f"--resume: no checkpoint in {work / 'checkpoints'} to resume from",
                             hint="run without --resume to start from step 0")
        if not resume:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()

    backend = choose_backend(cfg.train.backend)
    train_rows = read_split(cfg.run_dir / "data" / "train.jsonl")
    eval_rows = read_split(cfg.run_dir / "data" / "eval.jsonl")
    if dry_run:
        train_rows, eval_rows = train_rows[:DRY_RUN_ROWS], eval_rows[:max(2, DRY_RUN_ROWS // 4)]

    model, peft_config = load_model(ckpt, cfg, backend, tokenizer)
    from trl import SFTTrainer

    args = sft_config(cfg, output_dir=work / "checkpoints", backend=backend, max_steps=max_steps, dry_run=dry_run,
                      train_rows=len(train_rows), world_size=state.num_processes)
    trainer_class = packed_rows_trainer() if keeps_packed_rows(args, model) else SFTTrainer
    trainer = trainer_class(model=model, args=args, train_dataset=tokenized_dataset(train_rows, tokenizer),
                         eval_dataset=tokenized_dataset(eval_rows, tokenizer), processing_class=tokenizer,
                         peft_config=peft_config,
                         callbacks=make_callbacks(cfg, tokenizer=tokenizer, eval_conversations=eval_rows,
                                                  samples_file=work / "samples.jsonl", dry_run=dry_run))
    from transformers.trainer_callback import ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(quiet_progress())
    last = resume_point(work / "checkpoints") if resume else None
    start_step = int(last.name.split("-")[1]) if last else 0
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(last) if last else None)
    except KeyboardInterrupt:
        raise interrupted(work / "checkpoints") from None
    except RuntimeError as exc:  # torch.OutOfMemoryError subclasses RuntimeError
        message = str(exc).lower()
        if "out of memory" in message or "can't allocate memory" in message or \
                type(exc).__name__ == "OutOfMemoryError":
            raise StageError("train", f"out of memory on {backend.device} ({str(exc).splitlines()[0]})",
                             hint="lower train.batch_size (raise gradient_accumulation to compensate), lower "
                                  "data.max_seq_length, or use train.method: qlora") from None
        raise
    seconds = time.perf_counter() - started
    state.wait_for_everyone()
    metrics = training_metrics(trainer, seconds=seconds, steps=trainer.state.global_step - start_step,
                               backend=backend, dry_run=dry_run, world_size=state.num_processes)
    metrics["resumed_from_step"] = start_step if resume else None
    if state.is_main_process:
        record_training(run, cfg, ckpt, trainer=trainer, tokenizer=prepared, metrics=metrics, work=work)
    return TrainResult(cfg.run_dir, metrics)


def interrupted(checkpoints: Path) -> InterruptedStageError:
    """What Ctrl-C during training leaves: nothing recorded, and the checkpoint --resume continues from."""
    point = resume_point(checkpoints) if checkpoints.is_dir() else None
    if point is None:
        return InterruptedStageError("train", "before the first checkpoint; nothing was recorded",
                                     hint="re-run the same command to start again")
    return InterruptedStageError("train", f"nothing was recorded; {point.name} is complete",
                                 hint=f"continue from {point.name}: the same command with --resume (without "
                                      "--resume, training starts again from step 0)")


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
                    work: Path) -> None:
    """Stage ``train``: adapter (or full weights) + tokenizer, logs, samples, resolved config, report."""
    from packager.report import write_training_report

    parameters = {"method": cfg.train.method, "backend": metrics["backend"],
                  "backend_reason": metrics["backend_reason"], "config": cfg.model_dump(mode="json"),
                  "chat_template_source": tokenizer.chat_template_source, "tokenizer_notes": tokenizer.notes}
    with run.stage("train", parameters=parameters) as st:
        record_base(st, ckpt, cfg.base)
        for name in ("train.jsonl", "eval.jsonl"):
            st.add_input(run.path / "data" / name)
        out = st.output_dir("train")
        weights_dir = out / ("model" if cfg.train.method == "full" else "adapter")
        trainer.model.save_pretrained(weights_dir, safe_serialization=True)
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

"""Did it forget? A general check, beside the task, of what the base knew and the fine-tune may have lost.

Two measures that do not depend on the task, on base and fine-tune:

- **general text**: perplexity on a sample of ordinary prose, and the mean KL divergence of the fine-tune's
  next-token distribution from the base's, position by position (``KL(base || fine-tune)``: how far the
  fine-tune moved where the base was sure). Scored in windows, one window's logits at a time, so memory does
  not grow with the text.
- **general questions**: short factual questions answered greedily through the run's chat template; an
  answer counts when it contains one of the accepted answers as a whole word (case ignored).

packager ships a default set (``general_set/``: prose and questions written for it); ``eval.general.text``
and ``eval.general.questions`` point to your own. With a LoRA adapter the base is the same loaded model with
the adapter switched off (PEFT ``disable_adapter``); a full fine-tune needs the base loaded beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from packager.config.evaluation import GeneralConfig
from packager.errors import DependencyMissingError, InputFileError, StageError
from packager.models.inference import greedy_answers


SHIPPED = Path(__file__).parent / "general_set"
ASK = "{question} Answer in a few words."


@dataclass(frozen=True)
class GeneralSet:
    text: str
    questions: list[dict]  # {question, answers}
    text_sha256: str
    questions_sha256: str


def load_general_set(cfg: GeneralConfig) -> GeneralSet:
    """The configured general text and questions, else the shipped ones; a malformed line is named."""
    text_path = Path(cfg.text or SHIPPED / "text.txt")
    questions_path = Path(cfg.questions or SHIPPED / "questions.jsonl")
    text_bytes, question_bytes = text_path.read_bytes(), questions_path.read_bytes()
    questions = []
    for number, line in enumerate(question_bytes.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            ok = isinstance(item["question"], str) and item["answers"] and all(
                isinstance(a, str) and a.strip() for a in item["answers"])
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise InputFileError(questions_path, 'expected {"question": "...", "answers": ["...", ...]}',
                                 line=number)
        questions.append(item)
    if not text_bytes.decode("utf-8").strip():
        raise InputFileError(text_path, "the general text is empty")
    return GeneralSet(text_bytes.decode("utf-8"), questions, hashlib.sha256(text_bytes).hexdigest(),
                      hashlib.sha256(question_bytes).hexdigest())


def answered(answer: str, accepted: list[str]) -> bool:
    """An accepted answer appears in the answer as whole words, case ignored."""
    return any(re.search(rf"(?<!\w){re.escape(a.lower())}(?!\w)", answer.lower()) for a in accepted)


def _text_windows(tokenizer, text: str, cfg: GeneralConfig, *, context: int | None) -> list[list[int]]:
    """The text's tokens in windows of ``eval.general.window`` tokens, none longer than the model's context."""
    window = min(cfg.window, context or cfg.window)
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][: cfg.max_tokens]
    return [ids[i:i + window] for i in range(0, len(ids), window) if len(ids[i:i + window]) > 1]


def _text_scores(finetuned, base_logits, windows: list[list[int]]) -> dict:
    """Perplexity of both models and mean KL(base || fine-tune), one window at a time."""
    import torch

    nll_ft = nll_base = kl = 0.0
    count = 0
    with torch.no_grad():
        for ids in windows:
            inputs = torch.tensor([ids], device=finetuned.device)
            ft = torch.log_softmax(finetuned(input_ids=inputs).logits[0, :-1].float(), dim=-1)
            base = torch.log_softmax(base_logits(inputs)[0, :-1].float(), dim=-1)
            target = inputs[0, 1:]
            nll_ft -= ft.gather(1, target[:, None]).sum().item()
            nll_base -= base.gather(1, target[:, None]).sum().item()
            kl += (base.exp() * (base - ft)).sum().item()
            count += len(ids) - 1
    return {"tokens": count, "perplexity_base": math.exp(nll_base / count), "perplexity": math.exp(nll_ft / count),
            "kl_from_base": kl / count}


def _question_accuracy(model, tokenizer, questions: list[dict], cfg: GeneralConfig, label: str) -> float:
    prompts = [[{"role": "user", "content": ASK.format(question=q["question"])}] for q in questions]
    answers = greedy_answers(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, progress=label)
    return sum(answered(a, q["answers"]) for a, q in zip(answers, questions)) / len(questions)


def general_check(finetuned, tokenizer, cfg: GeneralConfig, *, load_base=None) -> dict:
    """The general check of a fine-tune against its base. ``finetuned`` is a PEFT model (its base is itself
    with the adapter off) or a full model, whose base ``load_base()`` loads beside it."""
    from peft import PeftModel

    general = load_general_set(cfg)
    peft = isinstance(finetuned, PeftModel)
    base_model = None if peft else load_base()

    def as_base():
        return finetuned.disable_adapter() if peft else contextlib.nullcontext()

    def base_logits(inputs):
        with as_base():
            return (finetuned if peft else base_model)(input_ids=inputs).logits

    context = getattr(finetuned.config.get_text_config(), "max_position_embeddings", None)
    text = _text_scores(finetuned, base_logits, _text_windows(tokenizer, general.text, cfg, context=context))
    ft_accuracy = _question_accuracy(finetuned, tokenizer, general.questions, cfg, "general questions: fine-tune")
    with as_base():
        base_accuracy = _question_accuracy(finetuned if peft else base_model, tokenizer, general.questions, cfg,
                                           "general questions: base")
    lm_eval = None
    if cfg.lm_eval_tasks:
        lm_eval = lm_eval_tasks(finetuned, tokenizer, cfg, base=None if peft else base_model, as_base=as_base)
    return {"text_sha256": general.text_sha256, "questions_sha256": general.questions_sha256, "lm_eval": lm_eval,
            "text_tokens": text["tokens"], "questions": len(general.questions),
            "base": {"perplexity": text["perplexity_base"], "question_accuracy": base_accuracy},
            "finetuned": {"perplexity": text["perplexity"], "question_accuracy": ft_accuracy,
                          "kl_from_base": text["kl_from_base"]},
            "perplexity_increase": text["perplexity"] / text["perplexity_base"] - 1,
            "accuracy_drop": base_accuracy - ft_accuracy}


_PREFERRED = ("acc,none", "exact_match,none", "acc_norm,none")


def _task_score(results: dict) -> tuple[str, float]:
    """The metric a task reports first by preference (accuracy), else its first number that is not a stderr."""
    for key in _PREFERRED:
        if isinstance(results.get(key), (int, float)):
            return key.split(",")[0], float(results[key])
    for key, value in results.items():
        if isinstance(value, (int, float)) and "stderr" not in key:
            return key.split(",")[0], float(value)
    raise ValueError(f"no score among {sorted(results)}")


def lm_eval_tasks(finetuned, tokenizer, cfg: GeneralConfig, *, base, as_base) -> dict:
    """``eval.general.lm_eval_tasks`` through lm-evaluation-harness (its ``simple_evaluate`` on the loaded
    models, as its HFLM wrapper takes an initialized model), on the fine-tune and on the base."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise DependencyMissingError("lm-eval", "to run eval.general.lm_eval_tasks",
                                     install="pip install 'packager[lm-eval]'") from None
    manager = TaskManager(include_path=str(cfg.lm_eval_include) if cfg.lm_eval_include else None)
    unknown = [t for t in cfg.lm_eval_tasks if t not in manager.all_tasks]
    if unknown:
        raise StageError("eval", f"eval.general.lm_eval_tasks: lm-eval knows no task {', '.join(unknown)}",
                         hint="name a task lm-eval lists (lm-eval ls tasks), or set eval.general.lm_eval_include "
                              "to the folder of your task YAMLs")

    def scores(model) -> dict[str, tuple[str, float]]:
        results = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8),
                                          tasks=list(cfg.lm_eval_tasks), limit=cfg.lm_eval_limit,
                                          task_manager=manager, log_samples=False, bootstrap_iters=0)
        return {task: _task_score(values) for task, values in results["results"].items()}

    tuned = scores(finetuned)
    with as_base():
        before = scores(base if base is not None else finetuned)
    return {"version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else None,
            "limit": cfg.lm_eval_limit,
            "tasks": {task: {"metric": metric, "base": before[task][1], "finetuned": value}
                      for task, (metric, value) in tuned.items()}}


def describe(general: dict | None) -> str:
    """One line: the general check's numbers, base -> fine-tune."""
    if general is None:
        return "general check: off (eval.general.enabled is false)"
    base, ft = general["base"], general["finetuned"]
    line = (f"general check: perplexity {base['perplexity']:.2f} -> {ft['perplexity']:.2f} "
            f"({general['perplexity_increase']:+.1%}) on {general['text_tokens']} tokens, mean KL from the base "
            f"{ft['kl_from_base']:.4f}; questions {base['question_accuracy']:.2f} -> {ft['question_accuracy']:.2f} "
            f"({general['questions']})")
    for task, scores in (general.get("lm_eval") or {}).get("tasks", {}).items():
        line += f"; lm-eval {task} {scores['metric']} {scores['base']:.3f} -> {scores['finetuned']:.3f}"
    return line


def regression_failures(gate, general: dict | None) -> list[str]:
    """What ``eval.gate.max_general_regression`` refuses in a general check's result."""
    if general is None or (gate.perplexity_increase is None and gate.accuracy_drop is None):
        return []
    failures = []
    base, ft = general["base"], general["finetuned"]
    if gate.perplexity_increase is not None and general["perplexity_increase"] > gate.perplexity_increase:
        failures.append(f"general-text perplexity rose {general['perplexity_increase']:.1%} over the base's "
                        f"({base['perplexity']:.2f} -> {ft['perplexity']:.2f}; eval.gate.max_general_regression."
                        f"perplexity_increase {gate.perplexity_increase}): the fine-tune forgot general language")
    if gate.accuracy_drop is not None and general["accuracy_drop"] > gate.accuracy_drop:
        failures.append(f"general questions: accuracy dropped {general['accuracy_drop']:.3f} "
                        f"({base['question_accuracy']:.3f} -> {ft['question_accuracy']:.3f}; "
                        f"eval.gate.max_general_regression.accuracy_drop {gate.accuracy_drop})")
    for task, scores in (general.get("lm_eval") or {}).get("tasks", {}).items():
        drop = scores["base"] - scores["finetuned"]
        if gate.accuracy_drop is not None and drop > gate.accuracy_drop:
            failures.append(f"lm-eval {task}: {scores['metric']} dropped {drop:.3f} ({scores['base']:.3f} -> "
                            f"{scores['finetuned']:.3f}; eval.gate.max_general_regression.accuracy_drop "
                            f"{gate.accuracy_drop})")
    return failures

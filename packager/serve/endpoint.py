"""The checks of a smoke test against a running OpenAI-compatible endpoint: it must generate the right thing,
not just answer 200 on /health.

Through the OpenAI-compatible API (the official ``openai`` client) and, for Ollama, its native
``/api/chat``, it checks that answers are non-empty and stop (finish_reason ``stop``, no stop-token text in
the answer), that the served model name is right, that concurrent requests all succeed, and that greedy
answers reproduce the **golden answers** recorded when the model was made (:mod:`packager.models.golden`): from the
merged checkpoint for vLLM, from the served GGUF for Ollama.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import click

from packager.errors import BadInputError, StageError
from packager.models.chat_template import ChatTemplate
from packager.models.golden import token_agreement
from packager.models.tool_calls import openai_messages
from packager.serve.ollama_parity import ollama_expectations
from packager.serve.smoke_tools import check_tool_calls
from packager.serve.parity import PARITY_CONVERSATIONS, first_difference


FALLBACK_QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
OPEN_MAX_TOKENS = 256
REQUEST_TIMEOUT_S = 300


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""
    skipped: bool = False


@dataclass
class SmokeReport:
    url: str
    model: str
    target: str | None
    checks: list[Check] = field(default_factory=list)
    answers: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    context: dict = field(default_factory=dict)  # the context the server was given: length, why

    @property
    def passed(self) -> bool:
        return all(c.passed or c.skipped for c in self.checks)

    def add(self, name: str, passed: bool, detail: str = "", *, skipped: bool = False) -> None:
        self.checks.append(Check(name, passed, detail, skipped))

    def to_dict(self) -> dict:
        return {"url": self.url, "model": self.model, "target": self.target, "passed": self.passed,
                "checks": [c.__dict__ for c in self.checks], "answers": self.answers, "timings": self.timings,
                "context": self.context}

    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.passed and not c.skipped]


@dataclass
class Expectations:
    """What the run says the endpoint must do."""

    golden: list[dict] = field(default_factory=list)
    stop_texts: list[str] = field(default_factory=list)
    tokenizer_file: Path | None = None
    min_agreement: float = 1.0
    concurrency: int = 8
    request_options: dict = field(default_factory=dict)
    """Sent with every request besides greedy decoding (e.g. Ollama's repeat_penalty, as its Modelfile sets it)."""
    chat_template: ChatTemplate | None = None
    """The served model's chat template, for Ollama's own rendering of the parity conversations."""
    tool_cases: list[dict] = field(default_factory=list)
    """Held-out requests with tools ({messages, tools, calls}) and the calls the served model made on them when it
    was made: the endpoint must return those as tool_calls."""


# ---------------------------------------------------------------- talking to the endpoint

def openai_client(url: str):
    from openai import OpenAI

    return OpenAI(base_url=url.rstrip("/") + "/v1", api_key="packager-smoke", timeout=REQUEST_TIMEOUT_S,
                  max_retries=0)


def _served_models(url: str) -> list[str]:
    import httpx2

    response = httpx2.get(url.rstrip("/") + "/v1/models", timeout=10)
    response.raise_for_status()
    return [m["id"] for m in response.json().get("data", [])]


def wait_ready(url: str, model: str, *, timeout_s: float, alive: Callable[[], str | None] | None = None,
               echo: Callable[[str], None] = click.echo) -> float:
    """Poll ``/v1/models`` until ``model`` is listed; show progress; fail early when the server died.

    Raises:
        StageError: not ready within ``timeout_s``, or ``alive()`` reported the server gone.
    """
    started = time.monotonic()
    last_error, next_note = "no answer yet", started + 10
    while True:
        try:
            models = _served_models(url)
            if model in models:
                return time.monotonic() - started
            last_error = f"/v1/models lists {models}, not {model!r}"
        except Exception as exc:  # connection refused, 503 while loading, bad JSON
            last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
        if alive is not None and (dead := alive()) is not None:
            raise StageError("smoke", f"the server stopped before it was ready: {dead}")
        now = time.monotonic()
        if now - started > timeout_s:
            raise StageError("smoke", f"{url} was not ready after {timeout_s:.0f} s ({last_error})",
                             hint="raise smoke.ready_timeout_s if the model is large")
        if now >= next_note:
            echo(f"  waiting for {url} ({now - started:.0f} s; {last_error})")
            next_note = now + 10
        time.sleep(0.5)


def _chat(client, model: str, messages: list[dict], max_tokens: int, options: dict) -> dict:
    started = time.monotonic()
    response = client.chat.completions.create(model=model, messages=openai_messages(messages), temperature=0, seed=0,
                                              max_tokens=max_tokens, extra_body=options or None)
    choice = response.choices[0]
    usage = response.usage
    return {"text": choice.message.content or "", "finish_reason": choice.finish_reason, "model": response.model,
            "seconds": round(time.monotonic() - started, 3),
            "completion_tokens": usage.completion_tokens if usage else None}


def _tokenizer(path: Path | None):
    if path is None or not Path(path).is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def check_endpoint(url: str, model: str, expect: Expectations, *, target: str | None = None,
                   ready_timeout_s: float = 600, alive: Callable[[], str | None] | None = None,
                   echo: Callable[[str], None] = click.echo) -> SmokeReport:
    """Every check against a running endpoint; returns the report (it never raises for a failed check)."""
    report = SmokeReport(url, model, target)
    report.timings["ready_s"] = round(wait_ready(url, model, timeout_s=ready_timeout_s, alive=alive, echo=echo), 2)
    report.add("model listed", True, f"/v1/models lists {model!r}")
    client = openai_client(url)
    tokenizer = _tokenizer(expect.tokenizer_file)
    prompts = [(g["messages"], g) for g in expect.golden] or [(FALLBACK_QUESTION, None)]
    agreements = []
    for messages, golden in prompts:
        max_tokens = (len(golden["tokens"]) + 16 if golden["stopped"] else len(golden["tokens"])) if golden \
            else OPEN_MAX_TOKENS
        try:
            answer = _chat(client, model, messages, max_tokens, expect.request_options)
        except Exception as exc:
            report.add("chat completion", False, f"{type(exc).__name__}: {str(exc)[:300]}")
            return report
        answer["question"] = messages[-1]["content"][:200]
        if golden is not None:  # a reasoning model's content, as vLLM's --reasoning-parser answers with it
            answer["golden"] = golden.get("visible", golden["text"])
            answer["exact"] = answer["text"] == answer["golden"]
            answer["token_agreement"] = _agreement(tokenizer, answer["golden"], answer["text"])
            agreements.append(answer["token_agreement"])
        report.answers.append(answer)
    _answer_checks(report, expect, model)
    if agreements:
        mean = sum(agreements) / len(agreements)
        exact = sum(bool(a.get("exact")) for a in report.answers)
        report.add("golden answers", mean >= expect.min_agreement,
                   f"token agreement {mean:.3f} (min {expect.min_agreement}); {exact}/{len(agreements)} identical")
    else:
        report.add("golden answers", True, "no golden answers to compare (no run given)", skipped=True)
    _concurrency_check(report, client, model, prompts, expect)
    if expect.tool_cases:
        check_tool_calls(report, client, model, expect)
    if target == "ollama" and (version := _ollama_native_check(report, url, model, expect, prompts[-1][0])):
        _ollama_template_check(report, url.rstrip("/"), model, expect, version)
    return report


def _answer_checks(report: SmokeReport, expect: Expectations, model: str) -> None:
    answers = report.answers
    empty = [a["question"] for a in answers if not a["text"].strip()]
    report.add("non-empty answers", not empty, f"empty answer to {empty[0]!r}" if empty else
               f"{len(answers)} answers")
    leaks = [(a["question"], s) for a in answers for s in _leaked(a["text"], expect)]
    report.add("no stop-token text", not leaks, f"{leaks[0][1]!r} in the answer to {leaks[0][0]!r}" if leaks
               else f"none of {len(expect.stop_texts)} special tokens ({', '.join(expect.stop_texts[:3])}"
                    f"{', ...' if len(expect.stop_texts) > 3 else ''}) in any answer")
    should_stop = [a for a, g in zip(answers, expect.golden or [None] * len(answers)) if _must_stop(g)]
    running = [a for a in should_stop if not stopped(a, expect)]
    if not should_stop:
        detail = "no golden answer stopped within its token budget when recorded: the model never stops"
    elif running:
        detail = (f"{running[0]['question']!r} did not stop (finish_reason {running[0]['finish_reason']!r}"
                  f"{', stop-token text in it' if _leaked(running[0]['text'], expect) else ''}): the stop token "
                  "is not honoured")
    else:
        detail = f"{len(should_stop)} answers stopped (finish_reason 'stop', no stop-token text)"
    report.add("answers stop", bool(should_stop) and not running, detail)
    names = sorted({a["model"] for a in answers})
    report.add("served model name", names == [model], f"responses name {names}, expected {model!r}")
    seconds = [a["seconds"] for a in answers]
    tokens = sum(a["completion_tokens"] or 0 for a in answers)
    report.timings.update({"requests": len(answers), "mean_latency_s": round(sum(seconds) / len(seconds), 3),
                           "completion_tokens_per_s": round(tokens / sum(seconds), 2) if sum(seconds) else None})


def stopped(answer: dict, expect: Expectations) -> bool:
    """One definition of an answer that stopped, for every check: the server says it ended on a stop
    (finish_reason ``stop``) and no stop-token text leaked into it."""
    return answer["finish_reason"] == "stop" and not _leaked(answer["text"], expect)


def _leaked(text: str, expect: Expectations) -> list[str]:
    return [s for s in expect.stop_texts if s and s in text]


def _must_stop(golden: dict | None) -> bool:
    """An answer must stop unless its golden answer ran past the token budget when it was recorded."""
    return golden is None or golden["stopped"]


class _Concurrent(NamedTuple):
    answered: bool
    stopped: bool
    must_stop: bool
    error: str | None = None


def _concurrency_check(report: SmokeReport, client, model: str, prompts: list, expect: Expectations) -> None:
    n = expect.concurrency
    jobs = [prompts[i % len(prompts)] for i in range(n)]
    started = time.monotonic()

    def one(job) -> _Concurrent:
        messages, golden = job
        try:
            answer = _chat(client, model, messages, len(golden["tokens"]) + 16 if golden else OPEN_MAX_TOKENS,
                           expect.request_options)
        except Exception as exc:
            return _Concurrent(False, False, _must_stop(golden), f"{type(exc).__name__}: {str(exc)[:200]}")
        return _Concurrent(answer["text"].strip() != "", stopped(answer, expect), _must_stop(golden))

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, jobs))
    answered = sum(r.answered for r in results)
    stops = sum(r.stopped for r in results)
    good = all(r.answered and (r.stopped or not r.must_stop) for r in results)
    errors = [r.error for r in results if r.error]
    report.timings["concurrent_s"] = round(time.monotonic() - started, 2)
    report.add(f"{n} concurrent requests", good, f"{answered}/{n} answered, {stops}/{n} stopped" +
               (f"; first error: {errors[0]}" if errors else ""))


def _ollama_native_check(report: SmokeReport, url: str, model: str, expect: Expectations,
                         messages: list[dict]) -> str | None:
    """Ollama's native /api/chat answers and stops; returns Ollama's version, None where the server is not Ollama."""
    import httpx2

    base = url.rstrip("/")
    try:
        version = httpx2.get(base + "/api/version", timeout=10)
    except Exception as exc:
        version = None
        why = f"{type(exc).__name__}"
    if version is None or version.status_code != 200:
        why = f"GET /api/version answered {version.status_code}" if version is not None else why
        report.add("ollama /api/chat", False, f"not checked: the server at {url} is not Ollama ({why})",
                   skipped=True)
        return None
    try:  # a failed request fails this check, like every other: the report is still written
        response = httpx2.post(base + "/api/chat", timeout=REQUEST_TIMEOUT_S, json={
            "model": model, "messages": messages, "stream": False,
            "options": {**expect.request_options, "temperature": 0, "seed": 0}})
        body = response.json() if response.status_code == 200 else {}
        text = (body.get("message") or {}).get("content", "") if isinstance(body, dict) else ""
    except (httpx2.HTTPError, ValueError, AttributeError) as exc:
        report.add("ollama /api/chat", False, f"{type(exc).__name__}: {str(exc)[:200]}")
        return _version(version)
    leaks = _leaked(text, expect)
    good = response.status_code == 200 and text.strip() and body.get("done_reason") == "stop" and not leaks
    report.add("ollama /api/chat", bool(good), f"status {response.status_code}, done_reason "
               f"{body.get('done_reason')!r}, {len(text)} characters" + (f", leaked {leaks}" if leaks else ""))
    return _version(version)


def _version(response) -> str:
    try:
        return str(response.json().get("version", "unknown"))
    except (ValueError, AttributeError):
        return "unknown"


RENDER_ONLY_SINCE = (0, 11, 5)
TEMPLATE_CHECK = "ollama renders the chat template"


def _ollama_template_check(report: SmokeReport, base: str, model: str, expect: Expectations, version: str) -> None:
    """Ollama's own rendering of the parity conversations, with the served TEMPLATE and today's currentDate, against
    transformers' rendering of the model's chat template: /api/chat with ``_debug_render_only`` answers with the
    prompt (``debug_info.rendered_template``) and generates nothing (Ollama v0.11.5 and later; v0.32.15
    server/routes.go ChatHandler). An older Ollama generates instead, and the check says so."""
    import datetime

    import httpx2

    if expect.chat_template is None:
        report.add(TEMPLATE_CHECK, True, "no run given: no chat template to compare with", skipped=True)
        return
    cases = ollama_expectations(expect.chat_template, PARITY_CONVERSATIONS, today=datetime.date.today())
    offered = _release(version) >= RENDER_ONLY_SINCE
    compared = 0
    for n, (sent, want, _) in enumerate(cases, 1):
        if want is None:  # the Jinja template refuses it (the containerize stage named it as a caveat)
            continue
        try:
            response = httpx2.post(base + "/api/chat", timeout=REQUEST_TIMEOUT_S, json={
                "model": model, "messages": sent, "stream": False, "_debug_render_only": True,
                "options": {"num_predict": 1}})
            info = response.json().get("debug_info") if response.status_code == 200 else None
            status = f"status {response.status_code}"
        except (httpx2.HTTPError, ValueError, AttributeError) as exc:
            info, status = None, f"{type(exc).__name__}: {str(exc)[:200]}"
        if not isinstance(info, dict) or not isinstance(info.get("rendered_template"), str):
            report.add(TEMPLATE_CHECK, False, f"Ollama {version} did not render conversation {n} without generating "
                       f"({status}; render-only needs Ollama 0.11.5 or later)", skipped=not offered)
            return
        if info["rendered_template"] != want:
            report.add(TEMPLATE_CHECK, False, f"Ollama renders conversation {n} differently from the Jinja chat "
                       f"template: {first_difference(want, info['rendered_template'], theirs='Ollama')}")
            return
        compared += 1
    report.add(TEMPLATE_CHECK, True, f"Ollama {version}'s own rendering of {compared} conversations equals the "
                                     "Jinja chat template's (_debug_render_only)")


def _release(version: str) -> tuple[int, ...]:
    """``0.32.15`` as (0, 32, 15); () for a version that is not one (a development build)."""
    parts = version.split("-")[0].split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else ()


def smoke_url(url: str, model: str, *, target: str | None = None, concurrency: int = 8,
              ready_timeout_s: float = 600, echo: Callable[[str], None] = click.echo) -> SmokeReport:
    """``packager smoke --url URL --model NAME`` without a run: every check but the golden answers."""
    if not url.startswith(("http://", "https://")):
        raise BadInputError(f"--url {url!r} must start with http:// or https://")
    report = check_endpoint(url, model, Expectations(concurrency=concurrency), target=target,
                            ready_timeout_s=ready_timeout_s, echo=echo)
    echo(format_report(report))
    if not report.passed:
        raise StageError("smoke", "; ".join(report.failures()))
    return report


def _agreement(tokenizer, golden: str, answer: str) -> float:
    """How much of the golden answer the endpoint reproduced: 1.0 for the same text; else the token agreement
    of both texts as the tokenizer splits them. Not the golden answer's own token ids: a model can generate a
    split the tokenizer would not make ('"Hauswilde"' in 7 tokens, 3 of them re-split), so the same text would
    score 0.43 against them."""
    if answer == golden:
        return 1.0
    if tokenizer is None:
        return 0.0
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
    return token_agreement(encode(golden), encode(answer))


def format_report(report: SmokeReport) -> str:
    lines = [f"smoke test of {report.model} at {report.url}:"]
    for c in report.checks:
        mark = "skip" if c.skipped else ("ok" if c.passed else "FAIL")
        lines.append(f"  [{mark:>4}] {c.name}: {c.detail}")
    if report.context:
        lines.append(f"  context: {report.context['length']} tokens ({report.context['why']})")
    t = report.timings
    lines.append(f"  ready in {t.get('ready_s')} s; mean latency {t.get('mean_latency_s')} s; "
                 f"{t.get('completion_tokens_per_s')} tokens/s; concurrent batch {t.get('concurrent_s')} s")
    return "\n".join(lines)

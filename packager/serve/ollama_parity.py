"""The Ollama TEMPLATE checked against the Jinja chat template: on each parity conversation as Ollama sends it
(collated, trimmed content where the Jinja trims), transformers' rendering equals packager's model of the format
and the TEMPLATE as Ollama executes it (:func:`packager.serve.go_template.render_as_ollama`)."""

from __future__ import annotations

import datetime
from typing import Callable

from packager.errors import StageError
from packager.models.chat_template import ChatTemplate
from packager.serve.chat_format import ChatFormat, cannot_express
from packager.serve.go_template import go_available, render_as_ollama
from packager.serve.parity import (PARITY_CONVERSATIONS, PARITY_DATE, TRUNCATED, as_ollama_sends, first_difference,
                                   jinja_prompt, trimmed_roles, trimming_caveat)


def expected_prompt(template: ChatTemplate, fmt: ChatFormat, messages: list[dict]) -> str:
    """The Jinja rendering of a request, minus the BOS llama.cpp adds by itself."""
    rendered = jinja_prompt(template, messages)
    return rendered[len(fmt.leading_bos):] if fmt.leading_bos and rendered.startswith(fmt.leading_bos) else rendered


def _parity_result(conversations: list[list[dict]], checked_with: str, trimmed: tuple[str, ...],
                   refused: dict[int, str]) -> dict:
    caveats = [c for c in (trimming_caveat(trimmed),) if c]
    for n, why in refused.items():
        shape = " (a long history as Ollama truncates it: it starts with an assistant turn)" if n == TRUNCATED else ""
        caveats.append(f"the Jinja template refuses conversation {n}{shape}, which Ollama renders anyway: {why}")
    return {"conversations": len(conversations), "checked_with": checked_with,
            "compared_as": "collated as Ollama collates repeated roles", "trimmed_roles": list(trimmed),
            "refused_by_jinja": sorted(refused), "caveat": "; ".join(caveats) or None}


def _jinja_refuses(render: Callable[[], str]) -> tuple[str | None, str | None]:
    """(the rendering, None), or (None, why) where the template raises on the conversation (Gemma's "roles must
    alternate" on a conversation that starts with an assistant turn)."""
    try:
        return render(), None
    except Exception as exc:  # noqa: BLE001 - jinja2's TemplateError, raise_exception() in the template
        return None, str(exc).splitlines()[0][:200]


def check_parity(template: ChatTemplate, fmt: ChatFormat, *, go_template: str | None = None,
                 conversations: list[list[dict]] = PARITY_CONVERSATIONS, use_go: bool | None = None) -> dict:
    """Compare Jinja, the inferred format and (when Go is installed, or ``use_go``) real Go text/template, on
    each conversation as Ollama sends it (:func:`as_ollama_sends`). A conversation the Jinja template raises on is
    named as a caveat: there is nothing to compare with.

    Raises:
        StageError: a conversation renders differently; the message shows where.
        DependencyMissingError: ``use_go`` is True and there is no Go toolchain.
    """
    go_template = go_template if go_template is not None else fmt.go_template()
    go = go_available() if use_go is None else use_go
    trimmed, refused = trimmed_roles(template), {}
    for n, messages in enumerate(conversations, 1):
        sent = as_ollama_sends(messages, trimmed)
        want, why = _jinja_refuses(lambda: expected_prompt(template, fmt, sent))
        if want is None:
            refused[n] = why
            continue
        got = fmt.render(sent)
        if got != want:
            raise cannot_express(f"conversation {n} renders differently: {first_difference(want, got)}")
        if go:
            rendered = render_as_ollama(go_template, sent, date=PARITY_DATE.isoformat())
            if rendered != want:
                raise StageError("ollama template", f"the Go TEMPLATE renders conversation {n} differently from "
                                                    f"the Jinja chat template: {first_difference(want, rendered)}")
    return _parity_result(conversations, "go text/template" if go else
                          "packager's model of the template (install Go to check with text/template itself)",
                          trimmed, refused)


def ollama_expectations(template: ChatTemplate, conversations: list[list[dict]], *,
                        today: datetime.date = PARITY_DATE,
                        trimmed: tuple[str, ...] | None = None) -> list[tuple[list[dict], str | None, str | None]]:
    """For each conversation: the messages as Ollama sends them to its TEMPLATE, the prompt the TEMPLATE must give
    (transformers' rendering on ``today``, minus the BOS llama.cpp adds by itself), or None and why where the Jinja
    template raises on it. ``trimmed``: :func:`trimmed_roles` of the template, when known."""
    bos = template.bos_token if template.adds_bos else ""
    trimmed, out = trimmed_roles(template) if trimmed is None else trimmed, []
    for messages in conversations:
        sent = as_ollama_sends(messages, trimmed)
        want, why = _jinja_refuses(lambda: jinja_prompt(template, sent, today=today))
        out.append((sent, want[len(bos):] if want is not None and bos and want.startswith(bos) else want, why))
    return out


def check_user_template(template: ChatTemplate, go_template: str, *,
                        conversations: list[list[dict]] = PARITY_CONVERSATIONS) -> dict:
    """Check the user's own TEMPLATE (``containers.ollama.template``) against the Jinja chat template on the
    parity conversations as Ollama sends them, with Go's text/template. Needs no inferred structure: it is the
    way out for templates packager cannot translate.

    Raises:
        StageError: a conversation renders differently; the message shows where.
        DependencyMissingError: there is no Go toolchain.
    """
    trimmed, refused = trimmed_roles(template), {}
    for n, (sent, want, why) in enumerate(ollama_expectations(template, conversations, trimmed=trimmed), 1):
        if want is None:
            refused[n] = why
            continue
        rendered = render_as_ollama(go_template, sent, date=PARITY_DATE.isoformat())
        if rendered != want:
            raise StageError("ollama template", f"containers.ollama.template renders conversation {n} differently "
                                                f"from the Jinja chat template: {first_difference(want, rendered)}")
    return _parity_result(conversations, "go text/template (containers.ollama.template)", trimmed, refused)

"""What every engine's rendering of a chat template is compared on: the parity conversations, the day they are
rendered on, transformers' rendering of a request (the reference: what the model was trained on), and the ways
Ollama changes a conversation before its TEMPLATE sees it."""

from __future__ import annotations

import datetime
from typing import Callable

from packager.models.chat_template import ChatTemplate

ROLES = ("system", "user", "assistant")

# Conversations every engine must render exactly as transformers does (Ollama's Go TEMPLATE, llama.cpp's Jinja):
# single and multi-turn, with and without a system turn, and contents that stress quoting (newlines, quotes,
# braces, Go and Jinja delimiters, unicode).
PARITY_CONVERSATIONS: list[list[dict]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Ticket: printer on floor 3 is jammed.\nPlease help!"},
     {"role": "assistant", "content": '{"category": "hardware", "priority": "low"}'},
     {"role": "user", "content": "And the summary?"}],
    [{"role": "system", "content": "Reply with JSON: category, priority, summary."},
     {"role": "user", "content": 'Quote: "it {{ broke }}" {% twice %} — naïve café ☕'},
     {"role": "assistant", "content": "{\n  \"category\": \"other\"\n}"},
     {"role": "user", "content": "Again, with `code` and \\ backslashes."}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "An empty system message, then this."}],
    [{"role": "user", "content": "Answer in JSON."}, {"role": "assistant", "content": '{"answer":'}],  # a prefill
    # repeated roles, which Ollama collates into one turn each before the TEMPLATE sees them
    [{"role": "system", "content": "Be brief."}, {"role": "system", "content": "Answer in English."},
     {"role": "user", "content": "First part."}, {"role": "user", "content": "Second part."},
     {"role": "assistant", "content": "Noted."}, {"role": "assistant", "content": "Go on."},
     {"role": "user", "content": "Done?"}],
    # whitespace around every content, which some templates trim (Llama 3, Gemma) and Go cannot
    [{"role": "system", "content": "  Be brief.\n"}, {"role": "user", "content": "\n Padded question?  "},
     {"role": "assistant", "content": " Padded answer. \n"}, {"role": "user", "content": "Next \n\n"}],
    # a long history as Ollama renders it once it no longer fits num_ctx (:func:`ollama_truncated`): the system
    # message kept, the oldest turns dropped, so that the rest starts with an assistant turn
    [{"role": "system", "content": "You answer tickets."}, {"role": "assistant", "content": "Second answer."},
     {"role": "user", "content": "Third question?"}],
]
TRUNCATED = len(PARITY_CONVERSATIONS)
"""The number of the conversation shaped as Ollama truncates a long history (numbered from 1)."""
PARITY_DATE = datetime.date(2025, 1, 31)
"""The day both renderers are told it is: Jinja's strftime_now and Ollama's currentDate."""


def jinja_prompt(template: ChatTemplate, messages: list[dict], *, today: datetime.date = PARITY_DATE,
                 tools: list[dict] | None = None) -> str:
    """The prompt transformers renders for a request: with the generation prompt after a user turn, and a final
    assistant turn left open (a prefill, as Ollama and llama-server continue it), on ``today``."""
    prefill = bool(messages) and messages[-1]["role"] == "assistant"
    return template.render(messages, add_generation_prompt=not prefill, continue_final_message=prefill,
                           today=today, tools=tools)


def ollama_collated(messages: list[dict]) -> list[dict]:
    """The conversation as an Ollama TEMPLATE sees it: consecutive messages of one role (but ``tool``) joined by a
    blank line (Ollama v0.32.15 template/template.go ``collate``, which render_template.go models). Jinja, as
    vLLM and llama.cpp run it, gives each message its own turn, so Ollama's prompt is compared with Jinja's
    rendering of this collated conversation: the closest the two can be."""
    out: list[dict] = []
    for message in messages:
        if out and out[-1]["role"] == message["role"] and message["role"] != "tool":
            out[-1] = {**out[-1], "content": out[-1]["content"] + "\n\n" + message["content"]}
        else:
            out.append(dict(message))
    return out


_PAD = " \n"


def trimmed_roles(template: ChatTemplate) -> tuple[str, ...]:
    """The roles whose content the Jinja template trims (Llama 3's and Gemma's ``message['content'] | trim``),
    read off a render with whitespace around marker contents. Go's text/template has no function that trims a
    string and Ollama adds none (v0.32.15 template/template.go ``funcs``: json, currentDate, yesterdayDate,
    toTypeScriptType), so no TEMPLATE can do the same."""
    marks = {role: f"\x02PKG{role.upper()}\x03" for role in ROLES}
    turns = [{"role": role, "content": _PAD + marks[role] + _PAD} for role in ("user", "assistant")]
    turns.append({"role": "user", "content": "x"})
    rendered = ""
    for conversation in ([{"role": "system", "content": _PAD + marks["system"] + _PAD}] + turns, turns):
        try:
            rendered = template.render(conversation, add_generation_prompt=True, today=PARITY_DATE)
            break
        except Exception:  # noqa: BLE001 - a template that raises on a system message; try without one
            continue
    return tuple(role for role in ROLES if marks[role] in rendered and _PAD + marks[role] + _PAD not in rendered)


def ollama_truncated(messages: list[dict], fits: Callable[[list[dict]], bool]) -> list[dict]:
    """The messages Ollama renders for a conversation whose prompt does not fit ``num_ctx`` (``fits`` says whether
    a list of messages does): the oldest messages dropped one at a time, the system messages among the dropped ones
    kept in front, until it fits; the last message is always kept (Ollama v0.32.15 server/prompt.go ``chatPrompt``,
    unchanged in v0.33.0-rc2)."""
    for i in range(len(messages)):
        kept = [m for m in messages[:i] if m["role"] == "system"] + messages[i:]
        if fits(kept) or i == len(messages) - 1:
            return kept
    return messages


def as_ollama_sends(messages: list[dict], trimmed: tuple[str, ...]) -> list[dict]:
    """What both renderers are compared on: the conversation collated as Ollama does, with the contents the Jinja
    template trims given without surrounding whitespace (see :func:`trimming_caveat`)."""
    return [{**m, "content": m["content"].strip()} if m["role"] in trimmed else m
            for m in ollama_collated([{**m, "content": m.get("content") or ""} for m in messages])]


def trimming_caveat(trimmed: tuple[str, ...]) -> str | None:
    if not trimmed:
        return None
    return (f"the Jinja template trims whitespace around {', '.join(trimmed)} content and an Ollama TEMPLATE cannot "
            "(Go templates have no trim function), so under Ollama a message sent with leading or trailing "
            "whitespace reaches the model with it; the templates agree on content without it")


def first_difference(want: str, got: str, *, theirs: str = "the TEMPLATE") -> str:
    at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    return f"at character {at}, Jinja has {want[at:at + 40]!r}, {theirs} has {got[at:at + 40]!r}"

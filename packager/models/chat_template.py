"""A saved chat template, read without transformers and rendered by transformers' own chat-template code."""

from __future__ import annotations

import contextlib
import datetime
import json
from dataclasses import dataclass
from pathlib import Path

from packager.models.tokenizer import no_chat_template_error, read_chat_template


@dataclass
class ChatTemplate:
    """A saved chat template with the tokens it renders with; reading it needs no transformers."""

    source: str
    bos_token: str
    eos_token: str
    special_tokens: dict[str, int]
    adds_bos: bool = False  # the tokenizer itself prepends BOS (so llama.cpp will too)

    @classmethod
    def from_model_dir(cls, model_dir: Path | str) -> "ChatTemplate":
        model_dir = Path(model_dir)
        template = read_chat_template(model_dir)
        if not template:
            raise no_chat_template_error(model_dir)
        tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text())
        specials = {t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", []) if t.get("special")}
        config = json.loads((model_dir / "tokenizer_config.json").read_text())
        token = lambda v: v.get("content") if isinstance(v, dict) else v  # noqa: E731
        bos = token(config.get("bos_token")) or ""
        adds_bos = bool(config.get("add_bos_token")) or (
            bos in specials and _post_processor_adds(tokenizer_json.get("post_processor"), bos))
        return cls(template, bos, token(config.get("eos_token")) or "", specials, adds_bos)

    def render(self, messages: list[dict], *, add_generation_prompt: bool, continue_final_message: bool = False,
               today: datetime.date | None = None, tools: list[dict] | None = None) -> str:
        """``messages`` rendered by transformers' own chat-template code (its sandbox, ``tojson``, ``{%
        generation %}`` and ``strftime_now``), as ``apply_chat_template`` renders them in training.

        ``continue_final_message``: the last (assistant) message is left open, a prefill. ``today``: the date
        ``strftime_now`` gives (default: today), so that a date line can be compared with another renderer's.
        ``tools``: the function definitions a request declares (the template's ``tools``).
        """
        from transformers.utils.chat_template_utils import render_jinja_template

        with _frozen_day(today):
            rendered, _ = render_jinja_template([messages], chat_template=self.source, bos_token=self.bos_token,
                                                eos_token=self.eos_token, add_generation_prompt=add_generation_prompt,
                                                continue_final_message=continue_final_message, tools=tools)
        return rendered[0]


@contextlib.contextmanager
def _frozen_day(today: datetime.date | None):
    """transformers' ``strftime_now`` as if it were ``today`` (midnight): it formats
    ``datetime.now()`` of its own module (``transformers/utils/chat_template_utils.py``), and a render variable
    cannot stand in for it (render keyword values are turned into plain data there)."""
    if today is None:
        yield
        return
    import transformers.utils.chat_template_utils as chat_template_utils

    real = chat_template_utils.datetime

    class Frozen(real):
        @classmethod
        def now(cls, tz=None):
            return cls(today.year, today.month, today.day, tzinfo=tz)

    chat_template_utils.datetime = Frozen
    try:
        yield
    finally:
        chat_template_utils.datetime = real


def _post_processor_adds(processor, token: str) -> bool:
    """Whether tokenizer.json's post-processor (a TemplateProcessing, maybe in a Sequence) inserts ``token``."""
    if not isinstance(processor, dict):
        return False
    if processor.get("type") == "Sequence":
        return any(_post_processor_adds(p, token) for p in processor.get("processors", []))
    single = processor.get("single") or []
    return any(isinstance(piece, dict) and piece.get("SpecialToken", {}).get("id") == token for piece in single)

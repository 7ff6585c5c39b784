"""A saved chat template rendered as transformers renders it (sandboxed Jinja), without importing transformers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from packager.models.tokenizer import no_chat_template_error, read_chat_template


@dataclass
class ChatTemplate:
    """A saved chat template rendered the way transformers renders it (sandboxed Jinja), without transformers."""

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

    def render(self, messages: list[dict], *, add_generation_prompt: bool) -> str:
        import re

        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                           extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = lambda x, **kw: json.dumps(x, **{k: v for k, v in kw.items() if k != "indent"})
        env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: "")
        source = re.sub(r"{%-?\s*(end)?generation\s*-?%}", "", self.source)
        return env.from_string(source).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                              bos_token=self.bos_token, eos_token=self.eos_token)


def _post_processor_adds(processor, token: str) -> bool:
    """Whether tokenizer.json's post-processor (a TemplateProcessing, maybe in a Sequence) inserts ``token``."""
    if not isinstance(processor, dict):
        return False
    if processor.get("type") == "Sequence":
        return any(_post_processor_adds(p, token) for p in processor.get("processors", []))
    single = processor.get("single") or []
    return any(isinstance(piece, dict) and piece.get("SpecialToken", {}).get("id") == token for piece in single)

"""The tokenizer every stage uses: the base model's, with a chat template and a pad token guaranteed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from packager.errors import InputFileError, MissingPathError


@dataclass
class PreparedTokenizer:
    tokenizer: object
    notes: list[str] = field(default_factory=list)
    chat_template_source: str = "tokenizer"


def load_tokenizer(model_dir: Path | str, *, chat_template: Path | None = None,
                   trust_remote_code: bool = False) -> PreparedTokenizer:
    """Load the tokenizer of ``model_dir``; apply a chat template file; ensure a pad token.

    Raises:
        InputFileError: the tokenizer has no chat template and none was given.
    """
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise MissingPathError(model_dir, f"could not load a tokenizer: {str(exc).splitlines()[0]}") from None
    prepared = PreparedTokenizer(tokenizer)
    if chat_template is not None:
        if not Path(chat_template).is_file():
            raise MissingPathError(chat_template, "chat template file (base.chat_template) does not exist")
        tokenizer.chat_template = Path(chat_template).read_text()
        prepared.chat_template_source = str(chat_template)
        prepared.notes.append(f"chat template from {chat_template}")
    if not tokenizer.chat_template:
        raise no_chat_template_error(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        prepared.notes.append(f"no pad token: using eos {tokenizer.eos_token!r} as pad")
    return prepared


def no_chat_template_error(model_dir: Path) -> InputFileError:
    return InputFileError(model_dir, "the tokenizer has no chat template, so conversations cannot be rendered",
                          field="chat_template",
                          hint="write the model's template as a Jinja file and set base.chat_template: "
                               "path/to/template.jinja in packager.yaml (or --chat-template FILE)")


def read_chat_template(model_dir: Path) -> str | None:
    """The chat template saved with a tokenizer (chat_template.jinja or tokenizer_config.json), no transformers."""
    import json

    model_dir = Path(model_dir)
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text()
    config_file = model_dir / "tokenizer_config.json"
    template = json.loads(config_file.read_text()).get("chat_template") if config_file.is_file() else None
    if isinstance(template, list):  # named templates: use the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template


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
        import json

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
        import json
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


def chat_stop_token_ids(model_dir: Path) -> list[int]:
    """Every token that ends an assistant turn in the chat template, plus eos, read from the saved files.

    Renders a conversation with Jinja (sandboxed, as transformers does) and reads the special token that
    follows the assistant's text, so it works for ChatML (<|im_end|>), Llama 3 (<|eot_id|>), Gemma
    (<end_of_turn>) and others, without importing transformers.
    """
    template = ChatTemplate.from_model_dir(model_dir)
    marker = "PACKAGER_ANSWER_MARKER"
    rendered = template.render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                               add_generation_prompt=False)
    after = rendered.split(marker, 1)[1].lstrip(" ") if marker in rendered else ""
    specials = template.special_tokens
    stops = [next((i for text, i in specials.items() if after.startswith(text)), None)]
    stops.append(specials.get(template.eos_token) if template.eos_token in specials else None)
    return sorted({i for i in stops if i is not None})

"""The tokenizer every stage uses: the base model's, with a chat template and a pad token guaranteed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from packager.errors import InputFileError, MissingPathError, first_line
from packager.models.system_policy import policy_of, with_system_policy


@dataclass
class PreparedTokenizer:
    tokenizer: object
    notes: list[str] = field(default_factory=list)
    chat_template_source: str = "tokenizer"


def load_tokenizer(model_dir: Path | str, *, chat_template: Path | None = None, system_policy: str | None = None,
                   trust_remote_code: bool = False) -> PreparedTokenizer:
    """Load the tokenizer of ``model_dir``; apply a chat template file and ``data.system_policy``
    (:mod:`packager.models.system_policy`; None keeps the template as saved, as a trained run's is); ensure a
    pad token.

    Raises:
        InputFileError: the tokenizer has no chat template and none was given.
    """
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise MissingPathError(model_dir, f"could not load a tokenizer: {first_line(exc)}") from None
    prepared = PreparedTokenizer(tokenizer)
    if chat_template is not None:
        if not Path(chat_template).is_file():
            raise MissingPathError(chat_template, "chat template file (base.chat_template) does not exist")
        tokenizer.chat_template = Path(chat_template).read_text()
        prepared.chat_template_source = str(chat_template)
        prepared.notes.append(f"chat template from {chat_template}")
    if not tokenizer.chat_template:
        raise no_chat_template_error(model_dir)
    templates = tokenizer.chat_template  # one template, or named ones ({"default": ..., "tool_use": ...})
    named = templates if isinstance(templates, dict) else {None: templates}
    if system_policy is not None and any(system_policy != policy_of(t) for t in named.values()):
        try:
            named = {name: with_system_policy(t, system_policy) for name, t in named.items()}
        except ValueError as exc:  # a trained run's template, and a config that now says otherwise
            raise InputFileError(model_dir, str(exc), field="chat_template",
                                 hint="set data.system_policy as it was in training") from None
        tokenizer.chat_template = named if isinstance(templates, dict) else named[None]
        prepared.notes.append(f"data.system_policy {system_policy}: the chat template "
                              + ("merges a system message into the first user message"
                                 if system_policy == "merge_into_first_user" else "drops a system message"))
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
    model_dir = Path(model_dir)
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text()
    config_file = model_dir / "tokenizer_config.json"
    template = json.loads(config_file.read_text()).get("chat_template") if config_file.is_file() else None
    if isinstance(template, list):  # named templates: use the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template


def chat_ids(tokenizer, messages: list[dict], *, generation_prompt: bool = False,
             tools: list[dict] | None = None) -> list[int]:
    """Token ids of ``messages`` rendered by the tokenizer's chat template (with the assistant's generation
    prompt when ``generation_prompt``, and the ``tools`` it may call): what the model is trained on and
    prompted with."""
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                            return_dict=True, tools=tools)
    return list(encoded["input_ids"])

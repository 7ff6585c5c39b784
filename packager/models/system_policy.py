"""``data.system_policy``: what becomes of a system message when the chat template cannot take one.

Gemma 2's template raises on a system role ("System role not supported"); Mistral 7B's raises because the
roles must alternate starting with user; other templates silently leave the system text out. The policy is
applied by a Jinja prelude put in front of the chat template itself, so that every renderer downstream does the
same thing: transformers in training, eval and golden answers, vLLM (which renders the saved template),
llama.cpp (the template embedded in the GGUF), and the Ollama TEMPLATE inferred from it
(:mod:`packager.serve.chat_format` reads the merged or dropped system message off renders of this prelude).

- ``error`` (default): rows with a system message are refused by ``data check``, naming the row and the policy.
- ``merge_into_first_user``: the system text and a blank line are put in front of the first user message,
  as Gemma 3's own template does with its system prompt.
- ``drop``: the system message is left out.
"""

from __future__ import annotations

from typing import Literal

SystemPolicy = Literal["error", "merge_into_first_user", "drop"]
SYSTEM_POLICIES: tuple[str, ...] = ("error", "merge_into_first_user", "drop")
SEPARATOR = "\n\n"

_MARK = "{#- packager data.system_policy: %s -#}\n"

# A top-level `set` in Jinja rebinds `messages` for the rest of the template (an `if` opens no scope). The last
# tag trims nothing after it, so the template's own first character is kept.
_PRELUDES = {
    "merge_into_first_user": (
        "{%- if messages and messages[0]['role'] == 'system' -%}\n"
        "{%- if messages | length > 1 and messages[1]['role'] == 'user' -%}\n"
        "{%- set messages = [{'role': 'user', 'content': messages[0]['content'] ~ '\\n\\n' ~ "
        "messages[1]['content']}] + messages[2:] -%}\n"
        "{%- else -%}\n"
        "{%- set messages = [{'role': 'user', 'content': messages[0]['content']}] + messages[1:] -%}\n"
        "{%- endif -%}\n"
        "{%- endif %}"),
    "drop": (
        "{%- if messages and messages[0]['role'] == 'system' -%}\n"
        "{%- set messages = messages[1:] -%}\n"
        "{%- endif %}"),
}


def policy_of(template: str) -> str:
    """The policy a chat template already applies (its prelude), or ``error``."""
    return next((p for p in _PRELUDES if template.startswith(_MARK % p)), "error")


def with_system_policy(template: str, policy: str) -> str:
    """``template`` applying ``policy`` to a leading system message (unchanged for ``error``).

    Raises:
        ValueError: the template already applies a different policy.
    """
    current = policy_of(template)
    if policy == current:
        return template
    if current != "error":
        raise ValueError(f"the chat template already applies data.system_policy {current}, not {policy}")
    if policy == "error":
        return template
    return _MARK % policy + _PRELUDES[policy] + template


SENTINEL = "PACKAGER-SYSTEM-PROBE"


def system_refusal(tokenizer) -> str | None:
    """Why the tokenizer's chat template cannot take a system message (it raises, or the text vanishes), or None.

    Probed with transformers' own rendering, the one training uses, on a system, user and assistant turn. None
    too when the template applies a policy: the user has said what becomes of the message.
    """
    if isinstance(tokenizer.chat_template, str) and policy_of(tokenizer.chat_template) != "error":
        return None
    messages = [{"role": "system", "content": SENTINEL}, {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi"}]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as exc:  # the template's raise_exception(), or a Jinja error  # noqa: BLE001
        return f"raises on a system message ({exc})"
    if SENTINEL not in rendered:
        return "leaves the system message out of what it renders"
    return None

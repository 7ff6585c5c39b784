"""Which tokens training learns from: the assistant's turns of a rendered conversation, found as spans of the
rendered text, never as rendered prefixes.

Prefixes are not stable in real templates: Qwen 3 writes an empty ``<think>`` block on the last assistant turn
only, Mistral moves the system prompt onto the last user turn, Phi-3 writes EOS after the final turn. A mask
built from "the conversation up to turn i" then spills into user turns. Here the conversation is rendered once;
where the template marks the assistant's text itself (``{% generation %}``), transformers' own mask is used;
otherwise each assistant turn is located in the rendered text, with the end-of-turn token that closes it, and
character spans become tokens through the tokenizer's offsets.
"""

from __future__ import annotations

import re

from packager.errors import StageError


GENERATION_MARK = re.compile(r"{%-?\s*generation\s*-?%}")
MARKER = re.compile("\ue000(\\d+)\ue001")


def as_ids(encoded) -> list[int]:
    """Token ids from what ``apply_chat_template(tokenize=True)`` returns (a list, or a mapping with input_ids)."""
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


def tokenize_with_assistant_mask(tokenizer, messages: list[dict[str, str]]) -> dict[str, list[int]]:
    """input_ids and a mask that is 1 on assistant tokens (their content and the end-of-turn token that closes
    each), else 0.

    Raises:
        StageError: an assistant turn's text is not in the rendering (a template that rewrites content), so
            what to learn from cannot be told.
    """
    if GENERATION_MARK.search(tokenizer.chat_template or ""):
        encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
        return {"input_ids": list(encoded["input_ids"]), "assistant_masks": list(encoded["assistant_masks"])}
    render = lambda conversation: tokenizer.apply_chat_template(conversation, tokenize=False)  # noqa: E731
    text = render(messages)
    spans = assistant_spans(text, messages, render=render, end_tokens=_special_texts(tokenizer))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(start < end_char and end > start_char for start_char, end_char in spans))
            for start, end in encoded["offset_mapping"]]
    return {"input_ids": list(encoded["input_ids"]), "assistant_masks": mask}


def assistant_spans(text: str, messages: list[dict], *, render, end_tokens: list[str]) -> list[tuple[int, int]]:
    """Character spans of ``text`` (``messages`` as ``render`` renders them) that hold each assistant turn's
    content and the end-of-turn token right after it (after spaces, if any).

    The conversation is rendered once more with each content replaced by a marker: where putting the contents
    back in gives ``text`` exactly (the template writes content as it is, wherever it puts it), the markers say
    where each turn is. Otherwise (a template that trims or rewrites content) each user and assistant content
    is looked for in order, the trimmed text where the template trims.
    """
    located = _by_markers(text, messages, render)
    if located is None:
        located = _by_search(text, messages)
    by_length = sorted(end_tokens, key=len, reverse=True)
    spans = []
    for start, end in located:
        rest = text[end:].lstrip(" ")
        closing = next((t for t in by_length if rest.startswith(t)), None)
        spans.append((start, end + len(text[end:]) - len(rest) + len(closing) if closing else end))
    return spans


def _by_markers(text: str, messages: list[dict], render) -> list[tuple[int, int]] | None:
    """Each assistant content's span, from a rendering with markers for contents; None where putting the
    contents back does not give ``text``."""
    marked = [{**m, "content": f"\ue000{n}\ue001"} if isinstance(m.get("content"), str) else m
              for n, m in enumerate(messages)]
    skeleton = render(marked)
    rebuilt, spans, seen, position = [], [], set(), 0
    for match in MARKER.finditer(skeleton):
        n = int(match.group(1))
        rebuilt.append(skeleton[position:match.start()])
        start = sum(map(len, rebuilt))
        rebuilt.append(messages[n]["content"])
        if _learned(messages[n]):
            if n in seen:
                return None  # written twice: which one is learned is not clear
            seen.add(n)
            spans.append((start, start + len(messages[n]["content"])))
        position = match.end()
    rebuilt.append(skeleton[position:])
    wanted = {n for n, m in enumerate(messages) if _learned(m)}
    return spans if "".join(rebuilt) == text and seen == wanted else None


def _learned(message: dict) -> bool:
    return message["role"] == "assistant" and isinstance(message.get("content"), str) and bool(message["content"].strip())


def _by_search(text: str, messages: list[dict]) -> list[tuple[int, int]]:
    """Each assistant content's span, looking for every user and assistant content in order (system prompts
    are skipped: templates move them)."""
    spans, at = [], 0
    for n, message in enumerate(messages):
        content = message.get("content")
        if message["role"] not in ("user", "assistant") or not isinstance(content, str) or not content.strip():
            continue
        found, length = _find(text, content, at)
        if found < 0:
            if message["role"] == "assistant":
                raise StageError("data", f"assistant turn {n + 1} is not in the conversation as the chat template "
                                         f"renders it (the template rewrites it?): {content[:60]!r}",
                                 hint="packager learns only from assistant text it can find in the rendering")
            continue
        if message["role"] == "assistant":
            spans.append((found, found + length))
        at = found + length
    return spans


def _find(text: str, content: str, at: int) -> tuple[int, int]:
    """Where ``content`` (or, for a template that trims, its stripped text) is in ``text`` from ``at``."""
    found = text.find(content, at)
    if found >= 0:
        return found, len(content)
    stripped = content.strip()
    return text.find(stripped, at), len(stripped)


def _special_texts(tokenizer) -> list[str]:
    """The text of every special token: what can close a turn."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    texts = {token.content for token in added.values() if getattr(token, "special", False)}
    return sorted(texts | set(tokenizer.all_special_tokens))

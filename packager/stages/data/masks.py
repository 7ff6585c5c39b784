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


def tokenize_with_assistant_mask(tokenizer, messages: list[dict], tools: list[dict] | None = None
                                 ) -> dict[str, list[int]]:
    """input_ids and a mask that is 1 on assistant tokens (their content, their tool calls as the template
    writes them, and the end-of-turn token that closes each), else 0: tool results are read, not learned.

    Raises:
        StageError: an assistant turn's text is not in the rendering (a template that rewrites content), so
            what to learn from cannot be told.
    """
    if GENERATION_MARK.search(tokenizer.chat_template or ""):
        encoded = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
        return {"input_ids": list(encoded["input_ids"]), "assistant_masks": list(encoded["assistant_masks"])}

    def render(conversation: list[dict], generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(conversation, tools=tools, tokenize=False,
                                             add_generation_prompt=generation_prompt)

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
    for n, (start, end) in sorted(located.items()):
        if messages[n].get("tool_calls"):
            spans.append(_calling_turn(text, messages, n, located, render=render, end_tokens=by_length))
            continue
        rest = text[end:].lstrip(" ")
        closing = next((t for t in by_length if rest.startswith(t)), None)
        spans.append((start, end + len(text[end:]) - len(rest) + len(closing) if closing else end))
    return spans


def _calling_turn(text: str, messages: list[dict], n: int, located: dict[int, tuple[int, int]], *, render,
                  end_tokens: list[str]) -> tuple[int, int]:
    """The span of assistant turn ``n``, which calls tools: from its content, or, where the template writes no
    content, from the end of the assistant header (the generation prompt) or, for a template without one
    (Mistral), from the end of the special token that closes the message before; to the first special token
    after its calls, which closes the turn. Each call's function name must lie inside it, in order."""
    start, end = located[n]
    if start < 0:  # no content written: the turn starts where its header ends
        opening = _assistant_header(render)
        found = text.find(opening, end) if opening else -1
        if found < 0:
            opening, found = _first_special(text, end, end_tokens)
        if found < 0:
            raise StageError("data", f"assistant turn {n + 1} calls tools, and where the chat template writes its "
                                     "calls cannot be told (no assistant header after the message before it)")
        start = end = found + len(opening)
    after = end
    for call in messages[n]["tool_calls"]:
        name = call["function"]["name"]
        at = text.find(name, after)
        if at < 0:
            raise StageError("data", f"assistant turn {n + 1} calls {name!r}, which the chat template does not write "
                                     "into the conversation", hint="use a chat template that renders tool calls")
        after = at + len(name)
    closing, at = _first_special(text, after, end_tokens)
    return start, (at + len(closing) if at >= 0 else len(text))


def _first_special(text: str, start: int, end_tokens: list[str]) -> tuple[str, int]:
    """The first special token in ``text`` from ``start`` (the longest, where two begin there), and where; -1
    when there is none."""
    found = [(at, token) for token in end_tokens if (at := text.find(token, start)) >= 0]
    if not found:
        return "", -1
    at, token = min(found, key=lambda f: (f[0], -len(f[1])))
    return token, at


def _assistant_header(render) -> str | None:
    """What the template writes to open an assistant turn: its generation prompt, read off a one-turn
    conversation rendered with and without it."""
    one = [{"role": "user", "content": "\ue000"}]
    with_prompt, without = render(one, True), render(one)
    return with_prompt[len(without):] if with_prompt.startswith(without) and len(with_prompt) > len(without) \
        else None


def _by_markers(text: str, messages: list[dict], render) -> dict[int, tuple[int, int]] | None:
    """Each assistant turn's content span, from a rendering with markers for contents; None where putting the
    contents back does not give ``text``. A turn that calls tools with no content is located by where the
    message before it ends: (-1, that end)."""
    marked = [{**m, "content": f"\ue000{n}\ue001"} if _has_text(m) else m for n, m in enumerate(messages)]
    skeleton = render(marked)
    rebuilt, found, position = [], {}, 0
    for match in MARKER.finditer(skeleton):
        n = int(match.group(1))
        rebuilt.append(skeleton[position:match.start()])
        start = sum(map(len, rebuilt))
        rebuilt.append(messages[n]["content"])
        if n in found and _learned(messages[n]):
            return None  # written twice: which one is learned is not clear
        found[n] = (start, start + len(messages[n]["content"]))
        position = match.end()
    rebuilt.append(skeleton[position:])
    written = all(n in found for n, m in enumerate(messages) if _learned(m) and _has_text(m))
    if "".join(rebuilt) != text or not written:
        return None
    return _learned_spans(messages, found)


def _learned_spans(messages: list[dict], found: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """The spans of learned turns; a calling turn without written content gets (-1, end of the message before)."""
    spans, anchor = {}, 0
    for n, message in enumerate(messages):
        if n in found:
            anchor = max(anchor, found[n][1])
        if _learned(message):
            spans[n] = found[n] if n in found else (-1, anchor)
    return spans


def _has_text(message: dict) -> bool:
    return isinstance(message.get("content"), str) and bool(message["content"].strip())


def _learned(message: dict) -> bool:
    return message["role"] == "assistant" and (_has_text(message) or bool(message.get("tool_calls")))


def _by_search(text: str, messages: list[dict]) -> dict[int, tuple[int, int]]:
    """Each assistant content's span, looking for every user, tool and assistant content in order (system
    prompts are skipped: templates move them)."""
    found_at, at = {}, 0
    for n, message in enumerate(messages):
        content = message.get("content")
        if message["role"] == "system" or not _has_text(message):
            continue
        found, length = _find(text, content, at)
        if found < 0:
            if message["role"] == "assistant":
                raise StageError("data", f"assistant turn {n + 1} is not in the conversation as the chat template "
                                         f"renders it (the template rewrites it?): {content[:60]!r}",
                                 hint="packager learns only from assistant text it can find in the rendering")
            continue
        found_at[n] = (found, found + length)
        at = found + length
    return _learned_spans(messages, found_at)


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

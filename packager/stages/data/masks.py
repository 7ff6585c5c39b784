"""Which tokens training learns from: the assistant's turns of a rendered conversation."""

from __future__ import annotations


def as_ids(encoded) -> list[int]:
    """Token ids from what ``apply_chat_template(tokenize=True)`` returns (a list, or a mapping with input_ids)."""
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


def tokenize_with_assistant_mask(tokenizer, messages: list[dict[str, str]]) -> dict[str, list[int]]:
    """input_ids and a mask that is 1 on assistant tokens (their content and end-of-turn token), else 0.

    Works with any chat template, including ones without ``{% generation %}``
    markers: each assistant turn spans from the rendered prefix with the
    generation prompt to the rendered prefix including that turn.
    """
    full = as_ids(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
    mask = [0] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(as_ids(tokenizer.apply_chat_template(messages[:i], tokenize=True, add_generation_prompt=True,
                                                          return_dict=False)))
        end = len(as_ids(tokenizer.apply_chat_template(messages[: i + 1], tokenize=True, return_dict=False)))
        for j in range(start, min(end, len(full))):
            mask[j] = 1
    return {"input_ids": full, "assistant_masks": mask}

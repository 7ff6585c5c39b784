"""The stop tokens of a model directory: the one place every stage reads them from.

Three views of one fact: the tokens that end an assistant turn in the chat template (what the merge writes
into ``generation_config.json``), the ids ``generation_config.json`` lists (what vLLM and the golden
answers stop on), and their text (Modelfile ``PARAMETER stop``, the smoke test's leak check).
"""

from __future__ import annotations

import json
from pathlib import Path

from packager.models.chat_template import ChatTemplate


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


def generation_stop_ids(model_dir: Path) -> list[int]:
    """The eos ids ``generation_config.json`` lists (every stop token, once a merge wrote it)."""
    eos = _json(Path(model_dir) / "generation_config.json").get("eos_token_id")
    return [eos] if isinstance(eos, int) else list(eos or [])


def stop_token_texts(model_dir: Path) -> list[str]:
    """The text of every stop token in generation_config.json."""
    tokenizer = _json(Path(model_dir) / "tokenizer.json")
    by_id = {t["id"]: t["content"] for t in tokenizer.get("added_tokens", [])}
    vocab = tokenizer.get("model", {}).get("vocab")
    by_vocab = {v: k for k, v in vocab.items()} if isinstance(vocab, dict) else {}
    return [by_id.get(i) or by_vocab[i] for i in generation_stop_ids(model_dir) if i in by_id or i in by_vocab]


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}

"""Tiny random-weight checkpoints with a real, locally trained tokenizer, and PEFT adapters for them.

Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Classify the support ticket and answer with JSON only.",
    '{"category": "billing", "priority": "high", "summary": "Refund a double charge."}',
    "My invoice was charged twice, please refund one of the payments.",
    "The app crashes every time I open the settings page on Android.",
    "What is the capital of France? The capital of France is Paris.",
    "system user assistant instruction input output",
] * 20


def build_tokenizer(directory: Path, *, chat_template: str | None = CHATML_TEMPLATE):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>", model_max_length=256)
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(directory)
    return fast


def build_tiny_llama(directory: Path, *, seed: int = 0, tie_word_embeddings: bool = True,
                     hidden_size: int = 32, tokenizer=None, max_position_embeddings: int = 256) -> Path:
    """A 2-layer, hidden-32 Llama with random weights, saved as safetensors with its tokenizer (by default a
    locally trained one; ``tokenizer`` gives another, e.g. a real model's)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = build_tokenizer(directory)
    else:
        tokenizer.save_pretrained(directory)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_position_embeddings, tie_word_embeddings=tie_word_embeddings,
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def make_adapter(base_dir: Path, out: Path, *, seed: int = 1, **lora_kwargs) -> Path:
    """A LoRA adapter with random (non-zero) A and B, saved by PEFT itself."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "init_lora_weights": False,
                           **lora_kwargs})
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # make modules_to_save copies differ from the base, as training would
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.05)
    peft_model.save_pretrained(out)
    return out


def lie_about_sizes(weights: Path) -> None:
    """Rewrite a safetensors header so its first tensor claims twice its shape (the data stays as it was)."""
    import struct

    data = weights.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    first = next(k for k in header if k != "__metadata__")
    header[first]["shape"] = [dim * 2 for dim in header[first]["shape"]]
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    weights.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + length:])


def build_tiny_llama_with_smollm2_tokenizer(directory: Path) -> Path:
    """The tiny Llama with SmolLM2's real tokenizer (read from the embedded GGUF, no weights).

    The locally trained tokenizer has a pre-tokenizer llama.cpp's converter does not know; SmolLM2's it does,
    so this tiny model exports to GGUF and gets an Ollama template like the real one.
    """
    from transformers import AutoTokenizer

    from packager.models.example_base import example_gguf_path

    gguf = example_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return build_tiny_llama(directory, tokenizer=tokenizer, max_position_embeddings=2048)

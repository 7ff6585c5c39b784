"""Tiny random-weight checkpoints of every architecture users bring, each with a tokenizer of the kind that
family ships and its chat template: what the model-family matrix runs every stage on. Nothing is downloaded.

Tokenizers: llama.cpp's converter recognises a byte-level BPE tokenizer only by the hash of its output on a
fixed text (``get_vocab_base_pre``), which depends on the whole vocabulary, so the BPE families use a real
vocabulary that is on this machine: Qwen's own (dashscope's ``qwen.tiktoken``, the 151,643-token vocabulary
Qwen 1.5 to 3 share, converted with transformers' TikTokenConverter and Qwen 2's split pattern) for Qwen, and
SmolLM2's (from its GGUF) with the family's special tokens added for Llama 3, GPT-NeoX and GPT-2. The
SentencePiece families (Gemma 2 and 3, Mistral, Phi-3) get a SentencePiece model trained here, as their
``tokenizer.model``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from support.families import TEMPLATES
from support.models import CHATML_TEMPLATE, CORPUS

HIDDEN = 32
# Weights 5x transformers' default spread: logits spread enough that greedy answers are not decided by ties a
# float16 rounding flips (at the default, a random model's logits have a std of 0.11).
INIT = 0.1
# Qwen 2's pre-tokenizer split pattern (its tokenizer.json), the same for Qwen 1.5 to 3.
QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


@dataclass(frozen=True)
class Architecture:
    name: str  # the family, as the README's table names it
    model_class: str  # transformers' class, as config.json's "architectures" says
    config_class: str
    tokenizer: str  # "qwen", "smollm2" (BPE with these specials added) or "spm" (SentencePiece trained here)
    template: str  # file under chat_templates/, or "chatml"
    specials: tuple[str, ...]
    end_of_turn: str
    settings: dict = field(default_factory=dict)  # the config beyond the common tiny sizes
    system_policy: str = "error"  # the data.system_policy a run on it needs (the checkpoint keeps its template)

    def chat_template(self) -> str:
        return CHATML_TEMPLATE if self.template == "chatml" else (TEMPLATES / self.template).read_text()


_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 128, "rope_theta": 500000.0}
ARCHITECTURES = {a.name: a for a in [
    Architecture("llama3", "LlamaForCausalLM", "LlamaConfig", "smollm2", "llama3.jinja",
                 ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "<|eot_id|>",
                 {"rope_parameters": _LLAMA3_ROPE, "tie_word_embeddings": True}),
    Architecture("qwen2.5", "Qwen2ForCausalLM", "Qwen2Config", "qwen", "chatml",
                 ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), "<|im_end|>", {"tie_word_embeddings": True}),
    Architecture("qwen3", "Qwen3ForCausalLM", "Qwen3Config", "qwen", "qwen3.jinja",
                 ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), "<|im_end|>",
                 {"head_dim": 16, "tie_word_embeddings": True}),
    Architecture("gemma2", "Gemma2ForCausalLM", "Gemma2Config", "spm", "gemma2.jinja",
                 ("<start_of_turn>", "<end_of_turn>"), "<end_of_turn>",
                 {"head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": 64},
                 system_policy="merge_into_first_user"),
    Architecture("gemma3", "Gemma3ForCausalLM", "Gemma3TextConfig", "spm", "gemma3.jinja",
                 ("<start_of_turn>", "<end_of_turn>"), "<end_of_turn>",
                 {"head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": 64}),
    # Mistral v0.3 writes the system prompt only into a user turn that ends the conversation: a training row
    # (ending with the answer) would lose it, and data check says so.
    Architecture("mistral", "MistralForCausalLM", "MistralConfig", "spm", "mistral-v0.3.jinja",
                 ("[INST]", "[/INST]"), "</s>", {"tie_word_embeddings": False},
                 system_policy="merge_into_first_user"),
    # <|endoftext|> too: llama.cpp looks it up by name for phi3 and refuses a vocabulary without it
    # ("error loading model vocabulary: unordered_map::at"); every published Phi-3 has it.
    Architecture("phi3", "Phi3ForCausalLM", "Phi3Config", "spm", "phi3.5.jinja",
                 ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), "<|end|>", {}),
    Architecture("gptneox", "GPTNeoXForCausalLM", "GPTNeoXConfig", "smollm2", "chatml",
                 ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), "<|im_end|>",
                 {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}}),
    Architecture("gpt2", "GPT2LMHeadModel", "GPT2Config", "smollm2", "chatml",
                 ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), "<|im_end|>", {}),
]}


def qwen_tokenizer():
    """Qwen's real vocabulary and special tokens, from the qwen.tiktoken file dashscope ships."""
    import importlib.metadata as md

    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab = Path(md.distribution("dashscope").locate_file("dashscope/resources/qwen.tiktoken"))
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = TikTokenConverter(vocab_file=str(vocab), pattern=QWEN_PATTERN, extra_special_tokens=specials).converted()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None)


def smollm2_tokenizer():
    """SmolLM2's real tokenizer, from the embedded GGUF."""
    from transformers import AutoTokenizer

    from packager.models.example_base import example_gguf_path

    gguf = example_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return tokenizer


def spm_tokenizer(directory: Path, arch: Architecture):
    """A SentencePiece BPE model trained here on the test corpus, with ``arch``'s special tokens, loaded the
    way transformers loads a checkpoint that ships only ``tokenizer.model``."""
    import sentencepiece
    from transformers import GemmaTokenizer, LlamaTokenizer

    # Gemma's own piece names and ids (<pad> 0, <eos> 1, <bos> 2, <unk> 3); Llama's for Mistral and Phi-3
    pieces = (dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>")
              if "gemma" in arch.name else dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1))
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=600, model_type="bpe", byte_fallback=True,
        user_defined_symbols=list(arch.specials), minloglevel=2, **pieces)
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    return (GemmaTokenizer if "gemma" in arch.name else LlamaTokenizer).from_pretrained(directory)


def build_checkpoint(arch: Architecture | str, directory: Path, *, seed: int = 0, hidden: int = HIDDEN) -> Path:
    """A 2-layer checkpoint of ``arch`` (hidden size 32 unless ``hidden``: QLoRA's 4-bit blocks want 64) with
    random weights, its tokenizer and chat template."""
    import torch
    import transformers
    from transformers import GenerationConfig

    from packager.models.stop_tokens import chat_stop_token_ids

    arch = ARCHITECTURES[arch] if isinstance(arch, str) else arch
    directory.mkdir(parents=True, exist_ok=True)
    if arch.tokenizer == "qwen":
        tokenizer = qwen_tokenizer()
    elif arch.tokenizer == "smollm2":
        tokenizer = smollm2_tokenizer()
    else:
        tokenizer = spm_tokenizer(directory, arch)
    # special, as in the families' own tokenizer.json (the turn markers of a SentencePiece model are pieces)
    tokenizer.add_special_tokens({"additional_special_tokens": list(arch.specials)})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = arch.chat_template()
    tokenizer.save_pretrained(directory)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if arch.name == "gpt2":
        config = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=hidden, n_layer=2, n_head=4,
                                         n_positions=512, initializer_range=INIT, **ids)
    else:
        config = getattr(transformers, arch.config_class)(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, initializer_range=INIT, **ids,
            **arch.settings)
    torch.manual_seed(seed)
    model = getattr(transformers, arch.model_class)(config)
    # what packager's merge writes: every token that ends an assistant turn in the template, and eos
    model.generation_config = GenerationConfig(eos_token_id=chat_stop_token_ids(directory),
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(directory)
    return directory

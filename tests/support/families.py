"""Model families as far as their chat template and special tokens go: the published template (a file under
chat_templates/, source named in its README), the tokens that template writes, and the token that ends an
assistant turn. Tokenizers are trained here, on a tiny corpus, with those special tokens: nothing is
downloaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from support.models import CHATML_TEMPLATE, CORPUS

TEMPLATES = Path(__file__).parent / "chat_templates"


@dataclass(frozen=True)
class Family:
    name: str
    template: str  # file under chat_templates/, or the template text itself for ChatML
    specials: tuple[str, ...]
    bos: str
    eos: str
    end_of_turn: str  # what closes an assistant turn
    system_policy: str = "error"  # data.system_policy, for templates that cannot take a system message

    def chat_template(self) -> str:
        from packager.models.system_policy import with_system_policy

        text = CHATML_TEMPLATE if self.template == "chatml" else (TEMPLATES / self.template).read_text()
        return with_system_policy(text, self.system_policy)


FAMILIES = [
    Family("chatml", "chatml", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), "<|im_start|>", "<|im_end|>",
           "<|im_end|>"),
    Family("llama3", "llama3.jinja", ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                      "<|eot_id|>"), "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"),
    Family("qwen3", "qwen3.jinja", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), "<|endoftext|>", "<|im_end|>",
           "<|im_end|>"),
    Family("gemma2", "gemma2.jinja", ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"), "<bos>", "<eos>",
           "<end_of_turn>", system_policy="merge_into_first_user"),
    Family("gemma3", "gemma3.jinja", ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"), "<bos>", "<eos>",
           "<end_of_turn>"),
    Family("mistral", "mistral-v0.3.jinja", ("<s>", "</s>", "[INST]", "[/INST]"), "<s>", "</s>", "</s>"),
    Family("phi3.5", "phi3.5.jinja", ("<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
           "<s>", "<|endoftext|>", "<|end|>"),
]


TOOL_FAMILIES = [next(f for f in FAMILIES if f.name == "qwen3")] + [
    Family("qwen2.5", "qwen2.5.jinja", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), "<|endoftext|>", "<|im_end|>",
           "<|im_end|>"),
    Family("llama3.1", "llama3.1.jinja", ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                          "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"),
           "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"),
    Family("mistral-nemo", "mistral-nemo.jinja", ("<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]",
                                                  "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
                                                  "[/TOOL_RESULTS]"), "<s>", "</s>", "</s>"),
]
"""Families whose published templates render tools, each in its own call format."""


def family_tokenizer(family: Family, *, chat_template: str | None = None):
    """A byte-level BPE tokenizer trained on the test corpus, with ``family``'s special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=family.eos))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(family.specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=family.bos, eos_token=family.eos,
                                   unk_token=family.eos, pad_token=family.eos, model_max_length=512)
    fast.chat_template = chat_template or family.chat_template()
    return fast

"""The model to train: the base in the backend's precision, with LoRA (or NF4 + LoRA for QLoRA) attached."""

from __future__ import annotations

from packager.config import PackagerConfig
from packager.errors import DependencyMissingError, StageError, first_line
from packager.models.checkpoint import Checkpoint
from packager.stages.train.backend import Backend


def load_model(ckpt: Checkpoint, cfg: PackagerConfig, backend: Backend, tokenizer):
    """The model to train, with LoRA attached for lora/qlora. Returns (model, peft_config or None)."""
    if backend.name == "unsloth":
        return _load_unsloth(ckpt, cfg), None
    import torch
    from transformers import AutoModelForCausalLM

    train = cfg.train
    dtype = torch.bfloat16 if backend.device == "cuda" and backend.bf16 else torch.float32
    kwargs: dict = {"dtype": dtype, "trust_remote_code": cfg.base.trust_remote_code}
    if train.method == "qlora":
        kwargs["quantization_config"] = _nf4_config(dtype)
        kwargs["device_map"] = {"": 0} if backend.device == "cuda" else {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(ckpt.path, **kwargs)
    except (ValueError, KeyError) as exc:
        if "Unrecognized" in str(exc) or "model_type" in str(exc) or isinstance(exc, KeyError):
            raise StageError("train", f"unknown model architecture {ckpt.architecture!r} in {ckpt.path}: "
                                      f"{first_line(exc)}",
                             hint="upgrade transformers, or set base.trust_remote_code: true if you trust "
                                  "the model's own code") from None
        raise
    text_config = model.config.get_text_config()  # a multimodal model (Gemma 3 4B) keeps it in text_config
    if getattr(text_config, "pad_token_id", None) is None:
        text_config.pad_token_id = tokenizer.pad_token_id
    if train.method == "full":
        return model, None
    if train.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, lora_config(cfg)


def _nf4_config(compute_dtype):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise DependencyMissingError("bitsandbytes", "for train.method: qlora", install="pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def lora_config(cfg: PackagerConfig):
    from peft import LoraConfig

    lora = cfg.train.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha or lora.r, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, use_rslora=lora.use_rslora, use_dora=lora.use_dora,
                      bias="none", task_type="CAUSAL_LM")


def linear_module_names(model) -> list[str]:
    """The names PEFT's "all-linear" targets, spelled out: the last name part of every linear layer (GPT-2's
    Conv1D and bitsandbytes' 4-bit layers included) except the output layer. Phi-3 has qkv_proj and
    gate_up_proj, GPT-NeoX query_key_value: not Llama's seven projections."""
    import torch
    from transformers.pytorch_utils import Conv1D

    output = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not output and "." in name})


def _load_unsloth(ckpt: Checkpoint, cfg: PackagerConfig):
    """Unsloth's fast path on CUDA. Unsloth wants explicit module names, so all-linear is spelled out; the
    rest of LoraConfig (use_dora) reaches PEFT through its keyword arguments (``get_peft_model(**kwargs)``
    in ``unsloth/models/llama.py``)."""
    from unsloth import FastLanguageModel  # noqa: I001  (unsloth must be imported before transformers)

    lora = cfg.train.lora
    model, _ = FastLanguageModel.from_pretrained(model_name=str(ckpt.path), max_seq_length=cfg.training_data.max_seq_length,
                                                 load_in_4bit=cfg.train.method == "qlora",
                                                 full_finetuning=cfg.train.method == "full")
    if cfg.train.method == "full":
        return model
    targets = lora.target_modules if lora.target_modules != "all-linear" else linear_module_names(model)
    return FastLanguageModel.get_peft_model(model, r=lora.r, lora_alpha=lora.alpha or lora.r,
                                            lora_dropout=lora.dropout, target_modules=targets,
                                            use_rslora=lora.use_rslora, use_dora=lora.use_dora,
                                            random_state=cfg.train.seed)

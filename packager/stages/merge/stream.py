"""Merge a LoRA adapter into its base, shard by shard, and prove the result.

The merge streams: base and adapter tensors are read one at a time by plain reads;
for each targeted weight ``scale * B @ A`` (DoRA: rescaled by its magnitude
vector) is computed in float32 and cast back; output shards are written
tensor by tensor and hashed while writing. Peak memory is a few tensors,
whatever the model size. QLoRA adapters are merged onto
the original 16-bit base weights, never onto dequantized 4-bit ones.

Verification is always on: logits of base+adapter (PEFT, unmerged) and of the
merged checkpoint are compared on fixed prompts, and the merged model must
differ from the base by more than rounding noise.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from packager.models.adapter import Adapter
from packager.models.checkpoint import TOKENIZER_FILES, Checkpoint, text_config
from packager.models.safetensors_stream import Layout, TensorSpec, read_layout, read_tensor, write_sharded
from packager.models.stop_tokens import chat_stop_token_ids, stop_token_texts
from packager.models.tool_calls import response_template, tool_call_format
from packager.models.tokenizer import no_chat_template_error, read_chat_template
from packager.stages.merge.plan import (check_adapter_fits_base, embedding_key, on_checkpoint_keys, plan_output,
                                        read_base_layout)


class TensorSource:
    """Base and adapter tensors one at a time, by plain reads: a mapping's pages would stay resident, and
    an adapter grows with the layer count (peak RSS grew with the model through it)."""

    def __init__(self, layout: Layout, adapter: Adapter):
        self.layout = layout
        self.adapter_layout = read_layout([adapter.file])
        self._scratch = None

    def base(self, key: str):
        return read_tensor(self.layout, key)

    def adapter(self, key: str):
        return read_tensor(self.adapter_layout, key)

    def float32(self, tensor):
        """``tensor`` in float32, in one buffer reused for every merged tensor.

        A fresh float32 temporary per tensor (16-46 MB at 3 GB) fragmented glibc's heap as the layers went
        by: peak RSS grew 1.2-1.4x when the model doubled. Valid until the next call.
        """
        import torch

        n = tensor.numel()
        if self._scratch is None or self._scratch.numel() < n:
            self._scratch = None
            self._scratch = torch.empty(n, dtype=torch.float32)
        return self._scratch[:n].view(tensor.shape).copy_(tensor)


def merged_tensor(spec: TensorSpec, *, adapter: Adapter, source: TensorSource, untie: bool):
    """The output tensor for ``spec``: base (or replacement) plus the LoRA delta, computed in float32."""
    import torch

    key = spec.name
    if key in adapter.replacements:
        weight = source.adapter(adapter.replacements[key])
    elif untie and key == "lm_head.weight":
        weight = source.base(embedding_key(source.layout))  # the original tied weight, plus its own delta below
    else:
        weight = source.base(key)
    module = adapter.modules.get(key)
    if module is not None:
        weight = source.float32(weight)
        a = source.adapter(module.a_key).to(torch.float32)
        b = source.adapter(module.b_key).to(torch.float32)
        transposed = module.kind == "embedding" or bool(adapter.config.get("fan_in_fan_out"))  # stored [in, out]
        if transposed:
            weight.add_((b @ a).T, alpha=module.scale)
        else:
            weight.addmm_(b, a, alpha=module.scale)  # in place, one kernel: W += scale * B @ A
        if module.magnitude_key is not None:  # DoRA: W' = m * (W + sBA) / ||W + sBA|| per output feature
            magnitude = source.adapter(module.magnitude_key).to(torch.float32)
            out_dim = 1 if transposed else 0
            weight = (magnitude / weight.norm(p=2, dim=1 - out_dim)).unsqueeze(1 - out_dim) * weight
    if weight.is_floating_point():
        dtype = getattr(torch, {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[spec.dtype])
        weight = weight.to(dtype, copy=module is not None)  # never hand out the reused float32 buffer
    return weight


@dataclass
class MergeOutput:
    directory: Path
    digests: dict[str, object]  # file name -> FileDigest, computed while writing
    untied_lm_head: bool
    vocab_size: int | None
    stop_ids: list[int]


def stream_merge(ckpt: Checkpoint, adapter: Adapter, out_dir: Path, *, dtype: str,
                 shard_bytes: int) -> MergeOutput:
    """Write the merged weights, config, generation config and tokenizer into ``out_dir``."""
    layout = read_base_layout(ckpt)
    adapter = on_checkpoint_keys(adapter, layout)
    check_adapter_fits_base(adapter, layout, base_name=ckpt.hub_id or str(ckpt.path))
    tokenizer_source = adapter.path if has_tokenizer(adapter.path) else ckpt.path
    if not read_chat_template(tokenizer_source):  # before any shard is written, naming the user's directory
        raise no_chat_template_error(tokenizer_source)
    config = json.loads((ckpt.path / "config.json").read_text())
    language = text_config(config)  # a multimodal config keeps the language model's settings there
    tied = bool(config.get("tie_word_embeddings", language.get("tie_word_embeddings", False)))
    specs, untie = plan_output(adapter, layout, dtype=dtype, tied=tied)
    source = TensorSource(layout, adapter)
    digests = write_sharded(out_dir, specs, lambda s: merged_tensor(s, adapter=adapter, source=source, untie=untie),
                            max_bytes=shard_bytes)
    vocab = next((s.shape[0] for s in specs if s.name == embedding_key(layout)), None)
    config.pop("quantization_config", None)
    config["dtype"] = dtype
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype
    if untie:
        config["tie_word_embeddings"] = False
        if "tie_word_embeddings" in language:
            language["tie_word_embeddings"] = False
    if vocab is not None:
        if "vocab_size" in language:
            language["vocab_size"] = vocab
        if "vocab_size" in config or not language:
            config["vocab_size"] = vocab
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    copy_tokenizer(tokenizer_source, out_dir)
    stop_ids = write_generation_config(ckpt.path, out_dir)
    add_response_template(out_dir)
    return MergeOutput(out_dir, digests, untie, vocab, stop_ids)


def has_tokenizer(directory: Path) -> bool:
    return any((directory / n).is_file() for n in ("tokenizer.json", "tokenizer.model"))


def copy_tokenizer(source: Path, out_dir: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, out_dir / name)


def add_response_template(out_dir: Path) -> None:
    """For a chat template that writes ``<tool_call>`` calls, a ``response_template`` in tokenizer_config.json
    (:func:`packager.models.tool_calls.response_template`), so that transformers' own serving returns the merged
    model's calls as tool_calls; one the tokenizer already has is kept."""
    from packager.models.chat_template import ChatTemplate

    config_file = out_dir / "tokenizer_config.json"
    fmt = tool_call_format(read_chat_template(out_dir) or "")
    if fmt is None or fmt.name != "hermes" or not config_file.is_file():
        return
    config = json.loads(config_file.read_text())
    if "response_template" in config:
        return
    template = ChatTemplate.from_model_dir(out_dir)
    asked = [{"role": "user", "content": "x"}]
    prompt = template.render(asked, add_generation_prompt=False)
    generation = template.render(asked, add_generation_prompt=True)
    schema = response_template(template.source, stop_token_texts(out_dir),
                               generation[len(prompt):] if generation.startswith(prompt) else "")
    if schema is not None:
        config_file.write_text(json.dumps({**config, "response_template": schema}, indent=2, ensure_ascii=False) + "\n")


def write_generation_config(base_dir: Path, out_dir: Path) -> list[int]:
    """generation_config.json whose eos_token_id lists every stop token of the chat template."""
    chat_stops = chat_stop_token_ids(out_dir)  # refuses a tokenizer without a chat template
    base_file = base_dir / "generation_config.json"
    gen = json.loads(base_file.read_text()) if base_file.is_file() else {}
    existing = gen.get("eos_token_id")
    existing = [existing] if isinstance(existing, int) else list(existing or [])
    stops = sorted(set(existing) | set(chat_stops))
    gen["eos_token_id"] = stops if len(stops) > 1 else stops[0]
    gen.pop("transformers_version", None)
    gen.pop("_from_model_config", None)
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return stops

"""Merged weights to compare: packager's streaming merge and PEFT's merge_and_unload, loaded as state dicts."""

from __future__ import annotations

from pathlib import Path

from packager.models.adapter import read_adapter
from packager.models.checkpoint import inspect_checkpoint
from packager.stages.merge.stream import stream_merge


def peft_merged_state(base_dir: Path, adapter_dir: Path) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def our_merged_state(base_dir: Path, adapter_dir: Path, out: Path, *, shard_bytes=10**9) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    out.mkdir()
    stream_merge(inspect_checkpoint(base_dir), read_adapter(adapter_dir), out, dtype="bfloat16",
                 shard_bytes=shard_bytes)
    return {k: v for k, v in AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).state_dict().items()}


def assert_equal_within_bf16(ours: dict, theirs: dict) -> None:
    import torch

    assert set(ours) == set(theirs)
    for key, expected in theirs.items():
        expected = expected.to(torch.bfloat16).float()
        got = ours[key].float()
        assert got.shape == expected.shape, key
        # identical up to one bf16 rounding step (float32 summation order may differ)
        assert torch.allclose(got, expected, rtol=2 ** -7, atol=1e-6), (key, (got - expected).abs().max())

"""``train.packing``: packed rows kept as rows, with position ids per conversation, where flash-attention is absent."""

from __future__ import annotations


def keeps_packed_rows(args, model) -> bool:
    """With ``train.packing``, whether each packed row stays its own row of the batch.

    TRL's packing makes its batches padding-free: the whole batch flattened into one row of
    ``batch_size x max_length`` tokens. That costs nothing extra only with flash-attention's varlen
    kernels. Under SDPA or eager attention (every CPU, and CUDA without flash-attn) the model builds a
    block-diagonal mask over the whole flattened row, so attention work and memory grow with
    ``(batch_size x max_length)^2`` instead of ``batch_size x max_length^2``: slower than not packing.
    There the batch stays ``[batch_size, max_length]``, with position ids restarting at each packed
    sequence, from which transformers builds the same per-sequence mask row by row.
    """
    impl = getattr(model.config, "_attn_implementation", None) or ""
    return bool(args.packing) and not impl.startswith("flash_attention")


def packed_rows_collator(pad_token_id: int):
    """Batches of TRL-packed rows (``input_ids``, ``labels``, ``seq_lengths``) as ``[rows, longest]``, with
    position ids per sequence. The attention mask only marks padding, for the Trainer's token count;
    :func:`for_the_model` takes it away before the forward pass."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    class PackedRows(DataCollatorForLanguageModeling):
        def torch_call(self, examples):
            batch = super().torch_call(examples)
            batch["labels"][batch["position_ids"] == 0] = -100  # never predict a sequence from the one before
            return batch

    return PackedRows(pad_token_id=pad_token_id, return_position_ids=True)


def for_the_model(inputs: dict) -> dict:
    """A packed-rows batch as the model takes it: without the mask, which would hide the sequence
    boundaries in the position ids (transformers derives per-sequence masks only when there is none)."""
    return {k: v for k, v in inputs.items() if k != "attention_mask"}


def packed_rows_trainer():
    """SFTTrainer with :func:`packed_rows_collator` batches (TRL refuses a collator of its own with packing)."""
    from trl import SFTTrainer

    class PackedRowsTrainer(SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.data_collator = packed_rows_collator(self.processing_class.pad_token_id)

        def compute_loss(self, model, inputs, *args, **kwargs):
            return super().compute_loss(model, for_the_model(inputs), *args, **kwargs)

    return PackedRowsTrainer

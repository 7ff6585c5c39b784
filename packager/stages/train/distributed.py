"""How the processes of an ``accelerate launch`` run share the work, as Accelerate set it up: recorded with the
run, and refused where a config asks for sharding that Accelerate would quietly not do.

An accelerate config with ``distributed_type: FSDP`` reaches the processes as ``ACCELERATE_USE_FSDP=true``.
Accelerate 1.15 turns that into FSDP only for a GPU-type process group: in ``accelerate/state.py``
(``AcceleratorState.__init__``) the FSDP branch sits under MULTI_GPU, MULTI_NPU, MULTI_XPU and their kind, so
processes on CPUs (MULTI_CPU, over gloo) train as plain data-parallel replicas, each holding the whole model,
and nothing says so. (PyTorch's own FSDP2 does run on CPU over gloo; Accelerate does not offer it there.)
"""

from __future__ import annotations

import os

from packager.errors import StageError


def _requested(variable: str) -> bool:
    return os.environ.get(variable, "false").lower() == "true"


def refuse_unavailable_sharding(state) -> None:
    """Before anything is written: FSDP asked for on processes that Accelerate will not shard.

    Raises:
        StageError: the launch's accelerate config says FSDP and the processes are on CPU.
    """
    from accelerate.utils import DistributedType

    if _requested("ACCELERATE_USE_FSDP") and state.distributed_type in (DistributedType.MULTI_CPU,
                                                                         DistributedType.NO):
        raise StageError("train", f"the accelerate config asks for FSDP, but these {state.num_processes} "
                                  "processes run on CPU, where Accelerate does not shard the model: each would "
                                  "train a whole replica (plain DDP) under the FSDP name",
                         hint="launch FSDP on GPUs; for data-parallel CPU processes use accelerate launch "
                              "--multi_gpu --num_processes N (README: Several processes or GPUs)")


def distributed_metrics(accelerator) -> dict:
    """What the run's processes did: Accelerate's distributed type, and FSDP's settings when it sharded."""
    from accelerate.utils import DistributedType

    metrics: dict = {"distributed": accelerator.distributed_type.value}
    if accelerator.distributed_type == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        metrics["fsdp"] = {"version": plugin.fsdp_version, "state_dict_type": str(plugin.state_dict_type),
                           "reshard_after_forward": str(getattr(plugin, "reshard_after_forward", None))}
    return metrics


def gathered_state_dict(trainer) -> dict | None:
    """Every process calls this after training. Under FSDP each holds a shard, so the whole state dict is
    gathered (a collective) for the main process to save as one adapter or model, as PEFT's FSDP recipe does
    with FULL_STATE_DICT; None when the model was never sharded.
    Not run on this project's CPU machines (see the module docstring)."""
    from accelerate.utils import DistributedType

    accelerator = trainer.accelerator
    if accelerator.distributed_type != DistributedType.FSDP:
        return None
    accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    return accelerator.get_state_dict(trainer.model)

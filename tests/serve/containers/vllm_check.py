"""Run vLLM's own `vllm serve` argument parser and engine-config check on a generated command line.

Runs in the vLLM check venv (`make vllm-check-venv`), not packager's: vLLM 0.33 installed with --no-deps,
VLLM_TARGET_DEVICE=cpu. It cannot serve here, but its parser and EngineArgs.create_engine_config() are the
ones `vllm serve` runs before loading weights, so a flag it would reject, or a value it would refuse for this
model directory, fails here too.

Usage: python vllm_check.py COMMAND_JSON [IMAGE_PATH=HOST_PATH ...]   (prints a JSON summary)
"""

import json
import os
import sys

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    command = json.loads(sys.argv[1])
    for mapping in sys.argv[2:]:  # paths inside the image -> the same files on this machine
        inside, host = mapping.split("=", 1)
        command = [arg.replace(inside, host) for arg in command]
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.model_executor.models import ModelRegistry
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from vllm.entrypoints.common.cli_args import validate_parsed_serve_args

    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    args = parser.parse_args(command)
    validate_parsed_serve_args(args)  # what `vllm serve` checks before loading (auto tool choice needs a parser)
    if getattr(args, "model_tag", None):
        args.model = args.model_tag  # what `vllm serve MODEL` does with the positional argument
    engine_args = AsyncEngineArgs.from_cli_args(args)
    config = engine_args.create_engine_config()
    model = config.model_config
    archs = model.hf_config.architectures or []
    supported = set(ModelRegistry.get_supported_archs())
    lora = config.lora_config
    reasoning = None
    if getattr(args, "reasoning_parser", None):  # the class `vllm serve` would load for the name, or an error
        from vllm.reasoning import ReasoningParserManager

        reasoning = ReasoningParserManager.get_reasoning_parser(args.reasoning_parser).__name__
    tool_parser = None
    if getattr(args, "tool_call_parser", None):  # the class `vllm serve` would load for the name, or an error
        from vllm.tool_parsers import ToolParserManager

        tool_parser = ToolParserManager.get_tool_parser(args.tool_call_parser).__name__
    print(json.dumps({
        "model": model.model, "served_model_name": model.served_model_name, "max_model_len": model.max_model_len,
        "dtype": str(model.dtype), "architectures": archs, "architecture_supported": all(a in supported for a in archs),
        "generation_config": model.generation_config, "tensor_parallel_size": config.parallel_config.tensor_parallel_size,
        "gpu_memory_utilization": config.cache_config.gpu_memory_utilization,
        "max_lora_rank": lora.max_lora_rank if lora else None,
        "lora_modules": [m.__dict__ if hasattr(m, "__dict__") else str(m) for m in (args.lora_modules or [])],
        "chat_template": args.chat_template, "reasoning_parser": reasoning, "tool_call_parser": tool_parser,
        "enable_auto_tool_choice": bool(getattr(args, "enable_auto_tool_choice", False)),
        "default_sampling": model.get_diff_sampling_param(),
    }, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

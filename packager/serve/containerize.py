"""``packager containerize RUN --target T``: the serving build context rendered from the run, recorded as stage
``containerize-<target>`` (every file's digest, and the context digest); ``--build`` builds its image.

Every flag is derived from the run: the served name, the context length, the dtype of the merged weights,
the stop tokens of the chat template. An unchanged context is not rendered again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import packager

from packager.run.directory import Run
from packager.run.settings import deployment_config
from packager.serve.context import Context, context_digest, link_or_copy, provenance, render_file
from packager.serve.engine import check_image_ref, qualified
from packager.serve.images import build_run_image
from packager.serve.lint import hadolint, kubernetes_check
from packager.serve.targets import TARGETS


@dataclass
class ContainerResult:
    run_dir: Path
    target: str
    context_dir: Path
    context_digest: str
    details: dict
    image: dict | None = None
    unchanged: bool = False  # the recorded context was already this one: nothing re-rendered

    def summary(self) -> str:
        d = self.details
        lines = [f"{self.target} build context: {self.context_dir} (sha256:{self.context_digest[:16]}…)",
                 f"  base image {d['base_image']}; serves {d['model_note']}"]
        if "template_parity" in d:
            parity = d["template_parity"]
            lines.append(f"  Modelfile TEMPLATE renders {parity['conversations']} conversations exactly as the Jinja "
                         f"chat template ({parity['checked_with']}); stops {d['stops']}")
            if parity.get("caveat"):
                lines.append(f"  caveat: {parity['caveat']}")
        else:
            lines.append("  vllm serve " + " ".join(d["command"]))
        if self.image:
            image = self.image
            lines.append(f"built {image['tag']} with {image['engine']} in {image['seconds']} s: "
                         f"{image['image_id'][:19]}" + (f", digest {image['digest']}" if image.get("digest") else ""))
        else:
            lines.append(f"build it: packager containerize {self.run_dir} --target {self.target} --build   "
                         f"(or: docker build -t {d['tag']} {self.context_dir})")
        return "\n".join(lines)


def default_tag(run, target: str, model_digest: str, settings: dict) -> str:
    """``packager/<run>-<target>:<12 hex>``, from what is served and how: same inputs, same tag."""
    key = json.dumps({"model": model_digest, "settings": settings, "packager": packager.__version__},
                     sort_keys=True, default=str)
    return f"packager/{run.manifest.run.lower()}-{target}:{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def render_context(run, cfg, target: str, *, tag: str | None = None) -> Context:
    """Every file of the build context, rendered in memory (nothing is written here)."""
    spec = TARGETS[target]
    ctx = spec.context(run, cfg)
    tcfg = getattr(cfg.containers, target)
    tag = check_image_ref(tag or default_tag(run, target, ctx.model_digest, {
        "settings": tcfg.model_dump(mode="json"), "max_len": cfg.trained_max_length}))
    base_image = qualified(tcfg.image)
    healthcheck = [part.format(name=ctx.served_name) for part in spec.healthcheck]
    ctx.texts["Dockerfile"] = render_file(f"{target}.Dockerfile.j2", run, ctx, command=ctx.command,
                                          healthcheck=healthcheck,
                                          baked_digest=ctx.details.get("baked_digest"),
                                          lora=ctx.details.get("lora", False),
                                          model_source=ctx.details.get("model_source"),
                                          model_path=ctx.details.get("model_path"),
                                          adapter_path=ctx.details.get("adapter_path"), tag=tag,
                                          base_image=base_image, model_note=ctx.details["model_note"])
    shm, shm_limit = spec.shm_size or (None, None)
    service = f"{run.manifest.run.lower().replace('_', '-').replace('.', '-')}-{target}"
    common = {"service": service, "port": spec.port, "shm_size": shm, "gpus": spec.gpus(cfg), "tag": tag,
              "api_key_env": getattr(tcfg, "api_key_env", None)}  # vLLM's; Ollama has no API keys
    ctx.texts["compose.yaml"] = render_file("compose.yaml.j2", run, ctx, healthcheck=healthcheck,
                                            start_period=spec.start_period, bind=str(cfg.containers.bind), **common)
    ctx.texts["kubernetes.yaml"] = render_file("kubernetes.yaml.j2", run, ctx, shm_limit=shm_limit,
                                               health_path=spec.health_path,
                                               startup_minutes=spec.startup_minutes, **common)
    ctx.details.update({"base_image": base_image, "tag": tag, "port": spec.port, "command": ctx.command})
    return ctx


def containerize_run(run_dir: Path | str, *, target: str, build: bool = False, engine: str | None = None,
                     tag: str | None = None, config_path: Path | None = None) -> ContainerResult:
    """``packager containerize RUN --target T [--build]``: render, record unless unchanged, build if asked."""
    run = Run.open(run_dir)
    cfg = deployment_config(run, config_path)
    ctx = render_context(run, cfg, target, tag=tag or cfg.containers.tag)
    files = {rel: run.digest(source).sha256 for rel, source in ctx.links.items()}
    ctx.texts["provenance.json"] = provenance(run, target, ctx.model_digest, dict(files))
    files.update({rel: hashlib.sha256(text.encode()).hexdigest() for rel, text in ctx.texts.items()})
    digest = context_digest(files)
    stage = f"containerize-{target}"
    recorded = run.manifest.stages.get(stage)
    unchanged = recorded is not None and recorded.metrics.get("context_digest") == digest and \
        run.outputs_intact(stage)
    details = {**ctx.details, "lint": recorded.metrics.get("lint")} if unchanged else ctx.details
    if not unchanged:
        _record_context(run, ctx, stage=stage, digest=digest)
    result = ContainerResult(run.path, target, run.path / "containers" / target, digest, details,
                             unchanged=unchanged)
    if build:
        result.image = build_run_image(run, target=target, engine=engine or cfg.containers.engine,
                                       timeout_s=cfg.containers.timeout_s)
    return result


def _record_context(run: Run, ctx: Context, *, stage: str, digest: str) -> None:
    """Write the context into ``RUN/containers/<target>/`` (model files hard-linked), lint it, record it."""
    with run.stage(stage, parameters={"target": ctx.target, "tag": ctx.details["tag"],
                                      "base_image": ctx.details["base_image"]}) as st:
        out = st.output_dir(f"containers/{ctx.target}")
        for source in ctx.inputs:
            st.add_input(source)
        for rel, source in sorted(ctx.links.items()):
            st.add_input(source)
            link_or_copy(source, out / rel)
            st.known_digest(out / rel, st.digest_of(source))
        for rel, text in sorted(ctx.texts.items()):
            (out / rel).write_bytes(text.encode())
        st.metrics.update({"context_digest": digest, "model_digest": ctx.model_digest,
                           "lint": hadolint(out / "Dockerfile"),
                           "kubernetes": kubernetes_check(out / "kubernetes.yaml"), **ctx.details})

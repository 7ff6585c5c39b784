"""The images built from rendered contexts (stage ``image-<target>``) and pushed with the engine
(``push-image-<target>``). The smoke test consumes ``containers/<target>-image.json``, so a re-render
invalidates both."""

from __future__ import annotations

import json
from pathlib import Path

from packager.errors import MissingPathError
from packager.run.directory import Run
from packager.run.settings import deployment_config
from packager.serve.engine import build_image, check_image_ref, find_engine, push_image


def image_file(run, target: str) -> Path:
    """``containers/<target>-image.json``: what the image-<target> stage built."""
    return run.path / "containers" / f"{target}-image.json"


def build_run_image(run, *, target: str, engine: str | None = None, timeout_s: float) -> dict:
    """Stage ``image-<target>``: build the rendered context; record engine, tag, id, digest."""
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
        image = build_image(eng, context, tag, log_file=run.path / ".packager" / "logs" / f"build-{target}.log",
                            timeout_s=timeout_s)
        image.update({"engine": eng.name, "engine_version": eng.version, "base_image": record.metrics["base_image"],
                      "context_digest": record.metrics["context_digest"]})
        st.write_output_text(f"containers/{target}-image.json", json.dumps(image, indent=2, sort_keys=True) + "\n")
        st.metrics.update(image)
    return image


def push_run_image(run_dir: Path | str, ref: str, *, target: str, engine: str | None = None,
                   insecure: bool = False) -> dict:
    """Stage ``push-image-<target>``: push the built image with the engine; record the digest."""
    run = Run.open(run_dir)
    check_image_ref(ref, what="image reference")
    built = image_file(run, target)
    if not built.is_file():
        raise MissingPathError(built, f"no {target} image was built for this run",
                               hint=f"run: packager containerize {run.path} --target {target} --build")
    image = json.loads(built.read_text())
    eng = find_engine(engine or image.get("engine"))
    timeout_s = deployment_config(run, None).containers.timeout_s
    digest = push_image(eng, image["tag"], ref, insecure=insecure, timeout_s=timeout_s)
    with run.stage(f"push-image-{target}", parameters={"ref": ref, "engine": eng.name}) as st:
        st.add_input(built)
        st.metrics.update({"ref": ref, "digest": digest, "image_id": image.get("image_id")})
    return {"ref": ref, "digest": digest}

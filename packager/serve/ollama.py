"""Ollama: the build context (a Modelfile whose Go TEMPLATE is proven equal to the Jinja chat template), and how
its endpoint is smoke-tested.

On a machine without Ollama, llama.cpp's OpenAI-compatible server on the same GGUF stands in (``smoke
--local``); the golden answers an Ollama endpoint must reproduce are the served GGUF's, from the export.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

from packager.errors import MissingPathError, StageError
from packager.models.chat_template import ChatTemplate
from packager.models.gguf import canonical_quant, read_gguf_metadata
from packager.models.stop_tokens import stop_token_texts
from packager.run.artifacts import merged_model_dir
from packager.serve.chat_format import infer_chat_format
from packager.serve.ollama_parity import check_parity, check_user_template
from packager.serve.context import (Context, LocalServer, Target, context_digest, links_digest, read_json,
                                    render_file, served_context_length)
from packager.serve.modelfile import check_modelfile, check_ollama_name, modelfile_string
from packager.serve.tool_parity import check_tool_parity, run_tool_conversations


PORT = 11434
SAMPLING_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                 "repetition_penalty": "repeat_penalty"}
"""generation_config.json's sampling keys and the Modelfile PARAMETER each becomes."""
NO_REPETITION_PENALTY = 1.0


def ollama_context(run, cfg) -> Context:
    ocfg = cfg.containers.ollama
    ctx = Context("ollama", run.manifest.run)
    model_dir = merged_model_dir(run)
    gguf, adapter = served_files(run, cfg) if ocfg.serve_mode == "lora" else (*served_files(run, cfg), None)
    note = f"{gguf.name} + ADAPTER {adapter.name}" if adapter else \
        f"GGUF {run.relative(gguf)} (passed the parity check)"
    if adapter is not None:
        check_adapter_support(gguf, ocfg.image)
    for file in filter(None, (adapter, gguf)):
        ctx.links[file.name] = file
    ctx.model_digest = links_digest(run, ctx.links)
    go_template, parity = ollama_template(model_dir, ocfg,
                                          tool_rows=run_tool_conversations(run.path / "data" / "train.jsonl"))
    check_ollama_name(ctx.served_name, what="the served model name (the run's name)")
    ctx.inputs = [f for f in (model_dir / n for n in ("config.json", "generation_config.json", "tokenizer.json",
                                                       "tokenizer_config.json", "chat_template.jinja")) if f.is_file()]
    if ocfg.template is not None:
        ctx.inputs.append(Path(ocfg.template))
    params = modelfile_parameters(cfg, model_dir)
    meant = modelfile_commands(gguf.name, adapter.name if adapter else None, go_template, ocfg.system, params,
                               _license_text(cfg))
    written = {c: modelfile_string(v, what=_what(c, v)) for c, v in meant if c in ("template", "system", "license")}
    ctx.texts["Modelfile"] = render_file("Modelfile.j2", run, ctx, gguf=gguf.name,
                                         adapter=adapter.name if adapter else None, template=written["template"],
                                         parity=parity, system=written.get("system"),
                                         stops=[modelfile_string(s, what=_what("stop", s)) for s in params["stop"]],
                                         num_ctx=params["num_ctx"], num_ctx_note=params["num_ctx_note"],
                                         sampling=params["sampling"], license=written.get("license"))
    check_modelfile(ctx.texts["Modelfile"], meant, context_files=set(ctx.links))
    ctx.command = ["serve"]
    # Podman 4.3 (Debian's; reproduced here) reuses a cached `RUN --mount=type=bind` step when only the
    # mounted files changed [buildah 5400]: a re-exported GGUF would be served stale under the new digest's
    # label. The step's own text names the digest of what it reads, which every builder keys its cache on.
    baked = {rel: run.digest(source).sha256 for rel, source in ctx.links.items()}
    baked["Modelfile"] = hashlib.sha256(ctx.texts["Modelfile"].encode()).hexdigest()
    ctx.details = {"model_note": note, "gguf": gguf.name, "adapter": adapter.name if adapter else None,
                   "baked_digest": context_digest(baked), "template_parity": parity, "stops": params["stop"],
                   "num_ctx": params["num_ctx"], "context_length": params["num_ctx"],
                   "context_note": params["num_ctx_note"]}
    return ctx


def modelfile_commands(gguf: str, adapter: str | None, template: str, system: str | None, params: dict,
                       license: str | None) -> list[tuple[str, str]]:
    """What Ollama must read from the Modelfile, command by command, in the order Modelfile.j2 writes them."""
    meant = [("model", f"./{gguf}"), *([("adapter", f"./{adapter}")] if adapter else []), ("template", template)]
    meant += [("system", system)] if system else []
    meant += [("stop", stop) for stop in params["stop"]] + [("num_ctx", str(params["num_ctx"]))]
    meant += [(key, str(value)) for key, value in params["sampling"]]
    return meant + ([("license", license)] if license else [])


def _what(command: str, value: str) -> str:
    return {"template": "the TEMPLATE", "system": "containers.ollama.system", "license": "the license text",
            "stop": f"the stop token {value!r}"}[command]


def ollama_template(model_dir: Path, ocfg, *, tool_rows: list[tuple[list[dict], list[dict]]] = ()) -> tuple[str, dict]:
    """The Go TEMPLATE (the user's ``containers.ollama.template``, else one derived from the Jinja chat template)
    and the proof that it renders the parity conversations as the Jinja template does; with function calling
    too where the template writes tools (on packager's tool conversations and ``tool_rows``, the run's own).

    Raises:
        StageError: they differ; or the run trains on tool rows and no TEMPLATE can write its tools.
    """
    template = ChatTemplate.from_model_dir(model_dir)
    if ocfg.template is not None:  # checked on its own: the way out where inference refuses the template
        go_template = Path(ocfg.template).read_text()
        parity = check_user_template(template, go_template)
        if tool_rows:
            parity["tools"] = check_tool_parity(template, go_template, whose="containers.ollama.template",
                                                own=tool_rows)
        return go_template, parity
    fmt = infer_chat_format(template)
    if tool_rows and fmt.tools is None:
        raise StageError("ollama template", "the run trains on function calling, and the Ollama TEMPLATE cannot "
                                            "write it: " + (fmt.tools_refused or "the chat template ignores tools"),
                         hint="write the Go template yourself (with .Tools and .ToolCalls) and set "
                              "containers.ollama.template: FILE; packager checks it against the Jinja template")
    go_template = fmt.go_template()
    parity = check_parity(template, fmt)
    if fmt.tools is not None:
        parity["tools"] = check_tool_parity(template, go_template, own=tool_rows)
    elif fmt.tools_refused:
        parity["tools"] = {"refused": fmt.tools_refused}
    return go_template, parity


def modelfile_parameters(cfg, model_dir: Path) -> dict:
    """What the Modelfile's PARAMETERs say: every stop token, the context length (and why), the sampling
    settings generation_config.json makes (as vLLM applies them)."""
    num_ctx, why = served_context_length(cfg, read_json(model_dir / "config.json"))
    sampling = ollama_sampling(read_json(model_dir / "generation_config.json"))
    return {"stop": stop_token_texts(model_dir), "num_ctx": num_ctx, "num_ctx_note": why, "sampling": sampling}


def ollama_sampling(generation_config: dict) -> list[tuple[str, object]]:
    """Modelfile PARAMETERs for the sampling settings generation_config.json makes (as vLLM applies them).

    Where it sets no repetition penalty, ``repeat_penalty 1``: transformers and vLLM apply none, but Ollama's
    default is 1.1 over the last 64 tokens (``DefaultOptions`` in its api/types.go), which changes even greedy
    answers: every repeated token of a JSON answer or a list is pushed down, so the served model would not be
    the one evaluated, and its golden answers would not reproduce.
    """
    params = [(SAMPLING_KEYS[k], generation_config[k]) for k in SAMPLING_KEYS if generation_config.get(k) is not None]
    if generation_config.get("repetition_penalty") is None:
        params.append(("repeat_penalty", NO_REPETITION_PENALTY))
    return params


def request_options(run, cfg) -> dict:
    """What the smoke test's requests carry so that a server which does not read the Modelfile (llama.cpp's,
    standing in for Ollama) penalises repetition as the Modelfile tells Ollama to; Ollama's OpenAI-compatible
    endpoint ignores the field, and the Modelfile decides."""
    sampling = dict(modelfile_parameters(cfg, merged_model_dir(run))["sampling"])
    return {"repeat_penalty": sampling["repeat_penalty"]} if "repeat_penalty" in sampling else {}


def passed_gguf(run, quant: str) -> Path:
    """The exported GGUF of type ``quant``, which must have passed its parity check."""
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


NEW_ENGINE_ARCHITECTURES = frozenset({
    "gemma3", "gemma3n", "mistral3", "qwen3", "qwen3moe", "qwen3vl", "qwen3vlmoe", "qwen25vl", "llama4", "mllama",
    "gptoss", "gpt-oss", "deepseek2", "deepseekocr"})
"""GGUF architectures Ollama 0.6-0.29 runs on its own Go engine [ollama fs/ggml/ggml.go OllamaEngineRequired:
gemma3 alone in v0.6.0, this list in v0.13.0], which refuses every LoRA adapter when the model loads ("loras are
not yet implemented", runner/ollamarunner/runner.go, v0.6.0 to v0.24.0; 0.25-0.29 were never released); `ollama
create` accepts the ADAPTER all the same. This is the union, so for an old pin an architecture added to the list
later is refused too. From v0.30.0 every GGUF runs on llama.cpp's llama-server, which is given each adapter
(--lora, llm/llama_server.go v0.32.15)."""


def check_adapter_support(base_gguf: Path, image: str) -> None:
    """Refuse ``serve_mode: lora`` where the pinned Ollama would build the image and then fail to load it."""
    version = re.search(r":v?(\d+)\.(\d+)(?:\.\d+)?(?:@|$)", image)
    if version is None or not (0, 6) <= (int(version[1]), int(version[2])) < (0, 30):
        return  # before its Go engine, or after llama-server took over: adapters load on every architecture
    architecture = read_gguf_metadata(base_gguf).get("architecture")
    if architecture in NEW_ENGINE_ARCHITECTURES:
        raise StageError("containerize", f"Ollama {version[1]}.{version[2]} ({image}) runs {architecture} models on "
                                         "its own engine, which refuses LoRA adapters when the model loads",
                         hint="serve the merged GGUF (containers.ollama.serve_mode: merged), or pin an Ollama "
                              "image of 0.30 or later (containers.ollama.image)")


# ---------------------------------------------------------------- the endpoint

def served_files(run, cfg) -> list[Path]:
    """The GGUF that passed parity; with ``serve_mode: lora`` the base GGUF and the LoRA GGUF, in that order."""
    if cfg.containers.ollama.serve_mode != "lora":
        return [passed_gguf(run, cfg.containers.ollama.quant)]
    folder = run.path / "export" / "adapter-gguf"
    files = [folder / f"{run.manifest.run}-base-f16.gguf", folder / f"{run.manifest.run}-lora.gguf"]
    if not files[1].is_file():
        raise MissingPathError(files[1], "no LoRA GGUF to serve (containers.ollama.serve_mode: lora)",
                               hint=f"run: packager export {run.path} --format adapter-gguf")
    return files


def golden(run, cfg) -> list[dict]:
    """The served GGUF's golden answers, recorded by its export (base + LoRA GGUF exported together)."""
    if cfg.containers.ollama.serve_mode == "lora":
        export = run.manifest.stages.get("export-adapter-gguf")
        return export.metrics.get("parity", {}).get("golden", []) if export else []
    export = run.manifest.stages.get("export-gguf")
    parity = export.metrics.get("parity", {}).get(canonical_quant(cfg.containers.ollama.quant), {}) if export else {}
    return parity.get("golden", [])


def local_server(run, cfg, port: int) -> LocalServer:
    """llama.cpp's OpenAI-compatible server on the served GGUF (the engine Ollama runs): llama-cpp-python's, the
    engine the golden answers were recorded with (llama-server parts from them at near-ties: 3/5 identical on the
    demo model). It returns calls as text, so the smoke test asks llama-server for those
    (:func:`packager.serve.smoke.check_tool_calls_on_llama_server`)."""
    files = served_files(run, cfg)
    lora = ["--lora_path", str(files[1])] if len(files) > 1 else []
    return LocalServer([sys.executable, "-m", "llama_cpp.server", "--model", str(files[0]),
                        "--model_alias", run.manifest.run, "--host", "127.0.0.1", "--port", str(port),
                        "--n_ctx", str(modelfile_parameters(cfg, merged_model_dir(run))["num_ctx"]),  # as served
                        "--n_threads", str(min(4, os.cpu_count() or 1)), *lora])


def on_host_network(run, port: int) -> tuple[list[str] | None, dict[str, str]]:
    return None, {"OLLAMA_HOST": f"127.0.0.1:{port}"}


TARGET = Target(
    name="ollama", port=PORT, health_path="/",
    # `ollama list` only proves the server answers. `show` fails (exit 1) when the model is not in the store;
    # `run NAME ""` with no terminal is a generate request with no prompt, which Ollama answers only once the
    # model (adapter included) is loaded [ollama server/routes.go GenerateHandler: "load the model"], and which
    # keeps it loaded. The `show` first: `run` would pull a missing model [ollama cmd/cmd.go RunHandler].
    healthcheck=["CMD-SHELL", "ollama show {name} >/dev/null && ollama run {name} ''"],
    start_period="600s", startup_minutes=10, shm_size=None,  # loading a large GGUF takes minutes
    local_description="llama.cpp's OpenAI-compatible server on the served GGUF (the engine Ollama runs)",
    context=ollama_context, golden=golden, served_files=served_files, local_server=local_server,
    on_host_network=on_host_network, gpus=lambda cfg: 1, request_options=request_options)

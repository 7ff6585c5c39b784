"""The config sections of serving and publishing: the container images (vLLM, Ollama), the smoke test, and where
models are pushed."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, IPvAnyAddress, StringConstraints

from packager.config.fields import ConfigPath, ModelfileText, PinnedImage, Section


class VllmConfig(Section):
    image: PinnedImage = "vllm/vllm-openai:v0.33.0"
    """Base image, by pinned tag; add @sha256:... to pin by digest."""
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    serve_mode: Literal["merged", "lora"] = "merged"
    """Serve the merged checkpoint, or the base plus the adapter (--enable-lora)."""
    extra_args: list[str] = []
    """More `vllm serve` flags, appended as given (checked by nothing but vLLM)."""
    api_key_env: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    """An environment variable holding the API key clients must send: compose hands it to vLLM as VLLM_API_KEY
    when the container starts, Kubernetes from the Secret <service>-api-key; never baked into the image."""

class OllamaConfig(Section):
    image: PinnedImage = "ollama/ollama:0.32.15"
    """Base image, by pinned tag; add @sha256:... to pin by digest."""
    quant: str = "q8_0"
    """Which exported GGUF to serve (it must have passed its parity check)."""
    serve_mode: Literal["merged", "lora"] = "merged"
    """Serve the merged GGUF, or the base GGUF plus the LoRA GGUF (ADAPTER; export --format adapter-gguf)."""
    system: ModelfileText | None = None
    """Default system prompt (Modelfile SYSTEM)."""
    template: ConfigPath | None = None
    """Your own Go TEMPLATE file instead of the one packager derives; checked against the Jinja template with Go."""

class ContainersConfig(Section):
    targets: list[Literal["vllm", "ollama"]] = ["vllm", "ollama"]
    engine: Literal["auto", "docker", "podman"] = "auto"
    tag: str | None = None
    """Image tag; defaults to packager/<run name>-<target>:<manifest digest prefix>."""
    port: int | None = Field(None, ge=1, le=65535)
    bind: IPvAnyAddress = "127.0.0.1"
    """Where compose publishes the server's port: this machine only by default; 0.0.0.0 is every interface
    (then set containers.vllm.api_key_env: Ollama has no API keys, so put a proxy in front of it)."""
    pull: bool = True
    """Let the engine pull missing base images. false: deploy builds only targets whose base image is local."""
    timeout_s: int = Field(7200, ge=1)
    """The longest one image build or push may take (a first build pulls vLLM's ~10 GB base image)."""
    context_length: int | None = Field(None, ge=1)
    """The context every server gets (vLLM --max-model-len, Ollama num_ctx). Default: the model's own limit,
    at most 32768 (the KV cache grows with it); never below the training length, never above the model's."""
    vllm: VllmConfig = {}
    ollama: OllamaConfig = {}


class TokenAgreement(Section):
    vllm: float = Field(0.9, ge=0, le=1)
    """vLLM computes in bf16/fp16 on GPU; the golden answers come from the merged checkpoint in float32."""
    ollama: float = Field(0.9, ge=0, le=1)
    """Ollama runs the same GGUF the golden answers came from, with its own llama.cpp build."""


class SmokeConfig(Section):
    ready_timeout_s: int = Field(600, ge=1)
    """How long the endpoint may take to load the model and answer /v1/models."""
    concurrency: int = Field(8, ge=1)
    """Concurrent chat requests that must all succeed."""
    min_token_agreement: TokenAgreement = {}
    """Mean share of golden greedy tokens (recorded at merge/export) the endpoint must reproduce, per target."""


class PublishConfig(Section):
    hub_repo: str | None = None
    """Hub repo id for the merged model; adapter and GGUF repos get -adapter and -GGUF suffixes."""
    private: bool = True
    oci_ref: str | None = None
    """OCI reference such as registry.example.com/team/model:tag; deploy pushes <registry>/<run>-<what>:<tag>."""
    oci_what: list[Literal["gguf", "merged", "adapter"]] = ["gguf", "merged"]
    """Which model files deploy pushes as OCI artifacts."""
    hub_what: list[Literal["merged", "adapter", "gguf"]] = ["merged", "gguf"]
    """Which kinds deploy pushes to the Hub (adapter and GGUF repos get -adapter and -GGUF suffixes)."""

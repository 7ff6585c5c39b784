"""``packager.yaml``: one typed schema, a section per stage, defaults in one place.

Parsed once at the edge by :func:`load_config`; each stage receives only its own
sub-model. Unknown keys are errors, and every problem is reported at once as
``path.to.field: message``. Relative paths are resolved against the config
file's directory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, Discriminator, Field, StringConstraints, Tag,
                      ValidationError, ValidationInfo, field_validator, model_validator)

from packager.errors import BadInputError, ConfigError, MissingPathError
from packager.names import HUB_ID
from packager.yaml_lines import YamlDocument, YamlFileError, read_yaml, schema_problems, shape_of

from packager.config.fields import ConfigPath, ModelfileText, OneLine, PinnedImage, SafeName, Section  # noqa: F401
from packager.config.evaluation import EvalConfig, GateConfig, PromptingConfig  # noqa: F401
from packager.config.serving import (ContainersConfig, OllamaConfig, PublishConfig, SmokeConfig,  # noqa: F401
                                     TokenAgreement, VllmConfig)


CONFIG_VERSION = 1


class RunConfig(Section):
    name: SafeName = "example"
    """Run name; outputs go to <root>/<name>/."""
    root: ConfigPath = Path("runs")
    """Directory holding the runs."""


def _resolve_model(value: str, info: ValidationInfo) -> str:
    """A local directory is resolved against the config file like every other path; a Hub id stays as it is."""
    base = (info.context or {}).get("config_dir")
    if base is None or Path(value).expanduser().is_absolute():
        return value
    local = Path(base) / value
    if value.startswith(("./", "../")) or local.is_dir():
        return str(local.resolve())
    return value


class BaseModelConfig(Section):
    model: Annotated[OneLine, AfterValidator(_resolve_model)]
    """A local Hugging Face checkpoint directory (relative to this file), or a Hub id such as
    HuggingFaceTB/SmolLM2-135M-Instruct."""
    revision: OneLine | None = None
    """Hub branch, tag or commit to pin (Hub ids only). The resolved commit is recorded in the manifest."""
    hub_id: OneLine | None = None
    """The Hub id to name in model cards when `model` is a local directory."""
    chat_template: ConfigPath | None = None
    """A Jinja file to use as the chat template when the tokenizer has none (or to override it)."""
    allow_pickle: bool = False
    """Allow pickle-only checkpoints (*.bin without safetensors). Pickle can run arbitrary code."""
    trust_remote_code: bool = False
    """Run the model repository's own Python code. Never enabled implicitly."""


class HubDataset(Section):
    """A dataset repository on the Hugging Face Hub (also written ``hf://datasets/ORG/NAME@REVISION``)."""

    hub: Annotated[str, StringConstraints(pattern=f"^{HUB_ID.pattern}$")]
    """Dataset repository id, such as org/name."""
    revision: OneLine | None = None
    """Branch, tag or commit; the commit it resolves to is recorded and every file is hashed."""
    config: OneLine | None = None
    """The dataset's configuration (subset), when it has several."""
    split: OneLine = "train"
    files: list[str] | None = None
    """Download only these files of the repository (glob patterns); default: all of it."""


def parse_hub_url(value: Any) -> Any:
    """``hf://datasets/ORG/NAME@REVISION`` (huggingface_hub's URL of a dataset) as a HubDataset's fields."""
    match = re.fullmatch(r"hf://datasets/([^@]+)(?:@(.+))?", value) if isinstance(value, str) else None
    return {"hub": match[1], "revision": match[2]} if match else value


DataSource = Annotated[Annotated[ConfigPath, Tag("(file)")] | Annotated[HubDataset, Tag("(hub)")],
                       Discriminator(lambda v: "(hub)" if isinstance(v, dict | HubDataset) else "(file)"),
                       BeforeValidator(parse_hub_url)]


class DataConfig(Section):
    train: DataSource
    """Training data: a JSONL, JSON, CSV/TSV or Parquet file, a `datasets` directory, or a Hub dataset."""
    eval: DataSource | None = None
    """Held-out data. When absent, `eval_fraction` of `train` is split off deterministically."""
    columns: dict[Literal["messages", "instruction", "input", "output", "system", "tools"], str] = {}
    """The data's own name of a field it names otherwise, such as {messages: conversation}."""
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    """Share of rows held out for evaluation when `eval` is not given."""
    seed: int = 42
    """Seed of the train/eval split."""
    max_seq_length: int = Field(1024, ge=16)
    """Longest tokenized row accepted; longer rows are reported, never silently truncated."""
    system_prompt: str | None = None
    """A system message added to rows that have none."""
    tools: ConfigPath | None = None
    """A JSON file with the list of tools ({type: function, function: {name, description, parameters}}) that rows
    declaring no `tools` of their own may call."""
    system_policy: Literal["error", "merge_into_first_user", "drop"] = "error"
    """For chat templates that raise on a system message or leave it out (Gemma 2, Mistral 7B): error refuses
    rows that have one; merge_into_first_user puts its text and a blank line before the first user message;
    drop leaves it out. Applied by the chat template itself, so training, eval and serving all do the same."""


class LoraConfig(Section):
    r: int = Field(16, ge=1)
    """LoRA rank."""
    alpha: int | None = None
    """LoRA alpha; defaults to r."""
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    """Modules to adapt: "all-linear" or a list of module names."""
    use_rslora: bool = False
    """Scale by alpha/sqrt(r) instead of alpha/r."""
    use_dora: bool = False


class TrainConfig(Section):
    method: Literal["lora", "qlora", "full"] = "lora"
    backend: Literal["auto", "trl", "unsloth"] = "auto"
    """auto picks unsloth on CUDA when installed, else plain TRL."""
    lora: LoraConfig = {}
    learning_rate: float | None = Field(None, gt=0)
    """Defaults to 2e-4 for lora/qlora and 1e-5 for full."""
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (overrides epochs)."""
    batch_size: int = Field(4, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    eval_steps: int = Field(50, ge=1)
    """Evaluate (and maybe checkpoint) every N steps."""
    save_total_limit: int = Field(2, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    """Stop after this many evaluations without improvement."""
    assistant_only_loss: bool = True
    """Compute the loss on assistant turns only."""
    packing: bool = False
    """Pack rows into full sequences (padding-free)."""
    sample_every: int = Field(50, ge=1)
    """Generate from fixed eval prompts every N steps, saved into the run."""
    seed: int = 42

    @property
    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-5 if self.method == "full" else 2e-4


class MergeConfig(Section):
    dtype: Literal["bfloat16", "float16"] = "bfloat16"
    shard_size: str = "2GB"
    """Largest output shard, e.g. 500MB or 5GB."""
    verify_prompts: int = Field(4, ge=1)
    """Fixed prompts on which merged and unmerged logits are compared."""

    @field_validator("shard_size")
    @classmethod
    def _size_parses(cls, value: str) -> str:
        parse_size(value)
        return value


class ExportConfig(Section):
    formats: list[Literal["safetensors", "gguf"]] = ["safetensors", "gguf"]
    gguf_quants: list[str] = ["q8_0"]
    """GGUF types to produce: f16, bf16, q8_0 (converter) and Q4_K_M, Q5_K_M, Q6_K (llama.cpp quantize)."""
    license: OneLine = "apache-2.0"
    """License for model cards; "other" needs license_name and license_link."""
    license_name: OneLine | None = None
    license_link: OneLine | None = None

    @model_validator(mode="after")
    def _other_license_is_named(self) -> "ExportConfig":
        if self.license == "other" and not (self.license_name and self.license_link):
            raise ValueError("license 'other' needs license_name and license_link")
        return self


class PackagerConfig(Section):
    """The whole of packager.yaml."""

    version: Literal[1] = CONFIG_VERSION
    """Config schema version."""
    run: RunConfig = {}
    base: BaseModelConfig
    data: DataConfig | None = None
    """What to train on. Needed to train and evaluate; absent for a run merged from an adapter trained
    elsewhere (`packager merge --adapter`)."""
    train: TrainConfig = {}
    eval: EvalConfig = {}
    merge: MergeConfig = {}
    export: ExportConfig = {}
    containers: ContainersConfig = {}
    smoke: SmokeConfig = {}
    publish: PublishConfig = {}

    @property
    def run_dir(self) -> Path:
        return self.run.root / self.run.name

    @property
    def training_data(self) -> DataConfig:
        """The data section, which training and evaluation need."""
        if self.data is None:
            raise BadInputError("data: the config has no data section, so there is nothing to train on",
                                hint="add data.train: path/to/train.jsonl to packager.yaml")
        return self.data

    @model_validator(mode="after")
    def _served_context_covers_training(self) -> "PackagerConfig":
        served, trained = self.containers.context_length, self.trained_max_length
        if served is not None and trained is not None and served < trained:
            raise ValueError(f"containers.context_length {served} is below data.max_seq_length {trained}: servers "
                             "would cut conversations as long as the ones the model was trained on")
        return self

    @property
    def trained_max_length(self) -> int | None:
        """The longest sequence training saw (data.max_seq_length); None for an adapter trained elsewhere."""
        return self.data.max_seq_length if self.data is not None else None


def section_type(annotation):
    """The section model of a field typed ``Section`` or ``Section | None`` (an optional section), else the type."""
    import types

    if isinstance(annotation, types.UnionType):
        models = [a for a in annotation.__args__ if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else annotation
    return annotation


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(value: str) -> int:
    """'2GB' -> 2_000_000_000; '512MiB' -> 536_870_912."""
    m = _SIZE.fullmatch(value)
    if not m:
        raise ValueError(f"{value!r} is not a size such as 500MB or 2GB")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()])


def parse_config(data: Any, *, source: Path | str = "<config>", config_dir: Path | None = None,
                 document: YamlDocument | None = None) -> PackagerConfig:
    """Validate a loaded config; ConfigError lists every problem at once, the file's own (a repeated key) too."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"(top level): expected a mapping of sections such as base:, data:, train:, "
                                   f"got {shape_of(data)}"])
    problems = list(document.problems) if document is not None else []
    try:
        config = PackagerConfig.model_validate(data, context={"config_dir": config_dir})
    except ValidationError as exc:
        problems += schema_problems(exc.errors(), document)
    if problems:
        raise ConfigError(source, problems)
    return config


def load_config(path: Path | str) -> PackagerConfig:
    """Read and validate ``packager.yaml``; raises ConfigError listing every problem, each with its line."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a config file" if path.is_dir() else "config file not found"
        raise MissingPathError(path, what, hint="create one with: packager init DIR")
    try:
        document = read_yaml(path)
    except YamlFileError as exc:
        raise ConfigError(path, exc.problems) from None
    return parse_config(document.data, source=path, config_dir=path.parent.resolve(), document=document)

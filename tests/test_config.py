from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from packager.config import PackagerConfig, load_config, parse_config, parse_size, section_type
from packager.errors import ConfigError, MissingPathError
from packager.pipeline.scaffold import init_project

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
MINIMAL = {"base": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}, "data": {"train": "data/train.jsonl"}}


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_config_loads_through_the_schema(example):
    cfg = load_config(example)
    assert isinstance(cfg, PackagerConfig)
    assert cfg.data.train.is_absolute() and cfg.data.train.parent.exists()


def test_examples_exist():
    assert EXAMPLES, "examples/ must hold at least one complete config"


def test_defaults_live_in_the_schema():
    cfg = parse_config(MINIMAL)
    assert (cfg.train.method, cfg.train.lora.r, cfg.train.lora.dropout) == ("lora", 16, 0.0)
    assert cfg.train.lora.target_modules == "all-linear"
    assert cfg.train.resolved_learning_rate == 2e-4
    assert parse_config({**MINIMAL, "train": {"method": "full"}}).train.resolved_learning_rate == 1e-5
    assert cfg.data.eval_fraction == 0.1 and cfg.merge.dtype == "bfloat16"


def test_config_is_frozen():
    cfg = parse_config(MINIMAL)
    with pytest.raises(Exception):
        cfg.train.method = "full"


def test_every_problem_is_reported_at_once_with_its_path(tmp_path):
    bad = {
        "base": {"modle": "x"},
        "data": {"train": "t.jsonl", "eval_fraction": 1.5},
        "train": {"method": "lorax", "lora": {"r": 0}},
        "containers": {"vllm": {"image": "vllm/vllm-openai:latest"}},
        "eval": {"format_regex": "("},
        "merge": {"shard_size": "lots"},
        "surprise": 1,
    }
    with pytest.raises(ConfigError) as info:
        load_config(write_yaml(tmp_path / "packager.yaml", bad))
    problems = info.value.problems
    joined = "\n".join(problems)
    for fragment in ("base.model: Field required", "base.modle: unknown key", "data.eval_fraction:",
                     "train.method:", "train.lora.r:", "containers.vllm.image:", "not pinned",
                     "eval.format_regex: not a valid regular expression", "merge.shard_size:",
                     "surprise: unknown key"):
        assert fragment in joined, fragment
    assert len(problems) == 9
    assert info.value.exit_code == 2
    assert str(tmp_path / "packager.yaml") in str(info.value)


def test_wrong_type_names_the_field_and_value():
    with pytest.raises(ConfigError) as info:
        parse_config({**MINIMAL, "train": {"batch_size": "many"}})
    assert info.value.problems == ["train.batch_size: Input should be a valid integer, unable to parse string "
                                   "as an integer (got 'many')"]


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "packager.yaml"
    path.write_text("base:\n  model: x\ndata: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "line 4" in info.value.problems[0] or "line 3" in info.value.problems[0]


def test_missing_config_file_points_to_init(tmp_path):
    with pytest.raises(MissingPathError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "packager init" in info.value.hint


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    cfg = load_config(write_yaml(tmp_path / "sub" / "packager.yaml", MINIMAL))
    assert cfg.data.train == (tmp_path / "sub" / "data" / "train.jsonl").resolve()
    assert cfg.run_dir == (tmp_path / "sub" / "runs" / "example").resolve()


@pytest.mark.parametrize("name", ["../escape", "a/b", "x;rm -rf", ".hidden", "a..b", ""])
def test_run_names_that_could_escape_are_refused(name):
    with pytest.raises(ConfigError) as info:
        parse_config({**MINIMAL, "run": {"name": name}})
    assert info.value.problems[0].startswith("run.name:")


def test_other_license_needs_a_name_and_link():
    with pytest.raises(ConfigError, match="license_name"):
        parse_config({**MINIMAL, "export": {"license": "other"}})
    ok = parse_config({**MINIMAL, "export": {"license": "other", "license_name": "x", "license_link": "https://x"}})
    assert ok.export.license_name == "x"


def test_images_must_be_pinned_and_may_carry_a_digest():
    digest = "vllm/vllm-openai:v0.33.0@sha256:" + "a" * 64
    assert parse_config({**MINIMAL, "containers": {"vllm": {"image": digest}}}).containers.vllm.image == digest
    with pytest.raises(ConfigError):
        parse_config({**MINIMAL, "containers": {"ollama": {"image": "ollama/ollama"}}})


def test_parse_size():
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("512MiB") == 512 * 2**20
    with pytest.raises(ValueError):
        parse_size("big")


def test_init_writes_a_commented_config_that_loads_and_a_valid_dataset(tmp_path):
    import json

    written = init_project(tmp_path / "proj", base_model="./base")
    config_text = written[0].read_text()
    assert config_text.count("\n#") + config_text.count("  #") > 20, "every documented key gets a comment"
    cfg = load_config(written[0])
    assert cfg.base.model == str((tmp_path / "proj" / "base").resolve()) and cfg.run.name == "proj"
    assert cfg.data.train == written[1].resolve()
    rows = [json.loads(line) for line in written[1].read_text().splitlines()]
    assert len(rows) >= 10 and all(r["messages"][-1]["role"] == "assistant" for r in rows)
    assert all(json.loads(r["messages"][-1]["content"])["category"] for r in rows)


def test_init_lists_every_schema_key(tmp_path):
    """The scaffold is generated from the schema, so every section and key appears; an optional section that is
    off by default (eval.judge) appears commented out, with its keys."""
    written = init_project(tmp_path / "p", base_model="m")
    text = written[0].read_text()
    loaded = yaml.safe_load(text)
    for section, model in PackagerConfig.model_fields.items():
        if section == "version":
            continue
        assert section in loaded
        fields = section_type(model.annotation).model_fields
        off = {name for name, info in fields.items() if info.default is None and isinstance(
            section_type(info.annotation), type) and issubclass(section_type(info.annotation), BaseModel)}
        assert set(loaded[section]) == set(fields) - off, section
        for name in off:
            assert f"  # {name}:\n" in text and all(f"  #   {key}:" in text
                                                   for key in section_type(fields[name].annotation).model_fields)
    assert "  # judge:\n" in text


def test_init_refuses_to_overwrite(tmp_path):
    init_project(tmp_path, base_model="m")
    with pytest.raises(FileExistsError):
        init_project(tmp_path, base_model="m")
    init_project(tmp_path, base_model="other", force=True)
    assert load_config(tmp_path / "packager.yaml").base.model == "other"


def test_an_empty_section_takes_its_defaults(tmp_path):
    """`train:` with every key below it commented out is YAML's null: it had been refused as "not a dict"."""
    path = tmp_path / "packager.yaml"
    path.write_text("base:\n  model: x\ntrain:\n#  max_steps: 10\ncontainers:\n  vllm:\n")
    cfg = load_config(path)
    assert cfg.train == PackagerConfig.model_validate(MINIMAL).train and cfg.containers.vllm.image
    assert cfg.data is None, "an optional section left empty is still absent"


def test_every_problem_is_told_once_at_its_line(tmp_path):
    path = tmp_path / "packager.yaml"
    path.write_text("\ufeffbase:\n  model: x\ntrain:\n  max_steps: ten\n  seed: 8\n  seed: 16\n"
                    "export:\n  gguf_quants:\n    - q8_0\n    - 5\nsmoke: [1]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        "line 6: train.seed: given twice (also on line 5); YAML keeps only the last, so keep one",
        "line 4: train.max_steps: Input should be a valid integer, unable to parse string as an integer "
        "(got 'ten')",
        "line 10: export.gguf_quants.1: Input should be a valid string (got 5)",
        "line 11: smoke: expected a section (indented key: value lines), got a list",
    ]


def test_aliases_are_loaded_as_safe_load_loads_them_and_a_recursive_one_ends(tmp_path):
    from packager.yaml_lines import read_yaml

    path = tmp_path / "a.yaml"
    path.write_text("base: &b {model: x}\nother: *b\nloop: &l [*l]\n")
    document = read_yaml(path)
    assert document.data["other"] == {"model": "x"} and document.data["loop"][0] is document.data["loop"]
    assert document.line_of(("other", "model")) == 2 and document.line_of(("base", "model")) == 1

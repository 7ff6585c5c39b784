import json
import os
import subprocess
import sys

import click
import pytest

from packager.cli import cli

TOP_LEVEL = {"init", "data", "train", "eval", "merge", "export", "containerize", "smoke", "push", "verify",
             "deploy", "demo", "report", "base", "sign", "keygen"}


def all_commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, (*prefix, name))


def test_every_command_group_exists(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert TOP_LEVEL <= set(cli.commands)
    for name in TOP_LEVEL:
        assert name in result.output


@pytest.mark.parametrize("path", [p for p, _ in all_commands(cli)], ids=" ".join)
def test_every_command_has_help_with_an_example(runner, path):
    result = runner.invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output and "packager " in result.output.split("Example:")[1]


def test_help_and_verify_do_not_import_heavy_libraries(tmp_path):
    from packager.run.directory import Run

    run = Run.create(tmp_path / "r")
    with run.stage("s") as st:
        st.write_output_text("a.txt", "x")
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from packager.cli import cli\n"
        "r = CliRunner()\n"
        "assert r.invoke(cli, ['--help']).exit_code == 0\n"
        "assert r.invoke(cli, ['verify', '--help']).exit_code == 0\n"
        f"assert r.invoke(cli, ['verify', {str(run.path)!r}]).exit_code == 0\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets', 'llama_cpp') "
        "if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_verify_cli_reports_a_flipped_byte_with_exit_1(runner, tmp_path):
    from packager.run.directory import Run

    run = Run.create(tmp_path / "r")
    with run.stage("export") as st:
        (st.output_dir("export") / "model.gguf").write_bytes(b"GGUF" + bytes(100))
    ok = runner.invoke(cli, ["verify", str(run.path)])
    assert ok.exit_code == 0 and "OK, 1 files" in ok.output
    path = run.path / "export" / "model.gguf"
    data = bytearray(path.read_bytes())
    data[50] ^= 1
    path.write_bytes(bytes(data))
    bad = runner.invoke(cli, ["verify", str(run.path)])
    assert bad.exit_code == 1
    assert "modified: export/model.gguf" in bad.output and "Traceback" not in bad.output
    as_json = runner.invoke(cli, ["verify", str(run.path), "--json"])
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and report["problems"][0].startswith("modified: export/model.gguf")


def test_user_mistakes_get_one_paragraph_and_exit_2(runner, tmp_path):
    result = runner.invoke(cli, ["verify", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {tmp_path}: not a packager run")
    assert "hint:" in result.output and "Traceback" not in result.output


def test_bad_config_lists_every_problem_and_exits_2(runner, tmp_path):
    cfg = tmp_path / "packager.yaml"
    cfg.write_text("base: {model: x, extra: 1}\ndata: {train: t.jsonl, seed: nope}\n")
    result = runner.invoke(cli, ["train", "-c", str(cfg)])
    assert result.exit_code == 2
    assert "base.extra: unknown key" in result.output and "data.seed:" in result.output


def test_usage_errors_exit_2(runner):
    assert runner.invoke(cli, ["export", "somewhere"]).exit_code == 2  # --format missing
    assert runner.invoke(cli, ["no-such-command"]).exit_code == 2


def test_containerize_names_the_missing_run(runner, tmp_path):
    result = runner.invoke(cli, ["containerize", str(tmp_path / "nope"), "--target", "vllm"])
    assert result.exit_code == 2 and str(tmp_path / "nope") in result.output and "Traceback" not in result.output


def run_packager(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "packager.cli", *args], capture_output=True, text=True, env=env)


def test_debug_variable_shows_the_traceback(tmp_path):
    plain = run_packager("verify", str(tmp_path), env_extra={"PACKAGER_DEBUG": ""})
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "error:" in plain.stderr
    debug = run_packager("verify", str(tmp_path), env_extra={"PACKAGER_DEBUG": "1"})
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "MissingPathError" in debug.stderr


def test_init_then_help_work(runner, tmp_path):
    result = runner.invoke(cli, ["init", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "demo" / "packager.yaml").is_file()
    assert runner.invoke(cli, ["init", str(tmp_path / "demo")]).exit_code == 2  # refuses to overwrite


def test_base_inspect_cli(runner, tiny_llama_dir):
    result = runner.invoke(cli, ["base", "inspect", str(tiny_llama_dir), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["architecture"] == "LlamaForCausalLM"
    assert len(summary["files"]["model.safetensors"]["sha256"]) == 64


def test_base_inspect_refuses_pickle_from_the_cli(runner, tiny_llama_copy):
    (tiny_llama_copy / "model.safetensors").rename(tiny_llama_copy / "pytorch_model.bin")
    result = runner.invoke(cli, ["base", "inspect", str(tiny_llama_copy)])
    assert result.exit_code == 2 and "pickle" in result.output and "Traceback" not in result.output
    assert runner.invoke(cli, ["base", "inspect", str(tiny_llama_copy), "--allow-pickle"]).exit_code == 0


@pytest.mark.slow
def test_base_example_cli_checks_the_answer(runner, tmp_path, smollm2_dir):
    import shutil

    out = tmp_path / "smol"
    shutil.copytree(smollm2_dir, out)  # the session fixture already imported it; the CLI reuses an intact import
    result = runner.invoke(cli, ["base", "example", str(out)])
    assert result.exit_code == 0, result.output
    assert "Paris" in result.output
    assert runner.invoke(cli, ["verify", str(out)]).exit_code == 0

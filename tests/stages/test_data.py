import hashlib
import json
from pathlib import Path

import pytest

from packager.stages.data.check import check_dataset, split_rows
from packager.stages.data.masks import tokenize_with_assistant_mask
from packager.stages.data.rows import read_rows
from packager.models.tokenizer import load_tokenizer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "data" / "tickets.jsonl"


def chat(user="hi", assistant="hello", system=None):
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": msgs}


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def problems_by_line(report):
    return {(p.line, p.field): p.message for p in report.problems}


def test_every_listed_problem_is_reported_at_once_with_line_and_field(tmp_path, tiny_llama_dir):
    rows = [
        chat("q1", "a1"),                                                              # 1 ok
        '{"messages": [{"role": "user", "content": "x"}',                             # 2 invalid JSON
        {"messages": [{"role": "human", "content": "x"}, {"role": "assistant", "content": "y"}]},   # 3 unknown role
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                      {"role": "assistant", "content": "c"}]},                         # 4 two user turns
        {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                      {"role": "assistant", "content": "c"}]},                         # 5 system not first
        {"messages": [{"role": "user", "content": "   "}, {"role": "assistant", "content": "c"}]},  # 6 empty
        {"messages": [{"role": "user", "content": "only a question"}]},                # 7 no assistant turn
        {"instruction": "do it", "output": "done"},                                    # 8 mixed formats
        chat("q1", "a1"),                                                              # 9 duplicate of 1
        chat("long " * 400, "a"),                                                      # 10 too long
        {"prompt": "x", "completion": "y"},                                            # 11 unknown format
    ]
    report = check_dataset(write_jsonl(tmp_path / "train.jsonl", rows), max_seq_length=128,
                           tokenizer=load_tokenizer(tiny_llama_dir).tokenizer)
    found = problems_by_line(report)
    assert "invalid JSON" in found[(2, None)]
    assert "unknown role 'human'" in found[(3, "messages[0].role")]
    assert "two user turns in a row" in found[(4, "messages[1].role")]
    assert "system message must come first" in found[(5, "messages[1].role")]
    assert found[(6, "messages[0].content")] == "empty content"
    assert "no assistant turn" in found[(7, "messages")]
    assert "one format per file" in found[(8, None)]
    assert found[(9, None)] == "exact duplicate of line 1"
    assert "longer than max_seq_length 128" in found[(10, "messages")]
    assert "unknown row format" in found[(11, None)]
    assert all(p.path == str(tmp_path / "train.jsonl") for p in report.problems)
    assert any("fewer than 200" in str(w) for w in report.warnings)


def test_eval_rows_that_appear_in_train_are_leakage(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [chat(f"q{i}", f"a{i}") for i in range(5)])
    eval_ = write_jsonl(tmp_path / "eval.jsonl", [chat("new", "x"), chat("q3", "a3")])
    report = check_dataset(train, eval_path=eval_)
    (leak,) = [p for p in report.errors]
    assert leak.path.endswith("eval.jsonl") and leak.line == 2 and "train.jsonl:4" in leak.message


def test_instruction_form_and_system_become_one_chat_form(tmp_path):
    path = write_jsonl(tmp_path / "inst.jsonl", [
        {"instruction": "Summarize", "input": "long text", "output": "short", "system": "Be brief."},
        {"instruction": "Translate hi", "output": "salut"},
    ])
    rows, problems = read_rows(path, system_prompt="Default system.")
    assert not problems
    assert rows[0].messages == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Summarize\n\nlong text"},
                                {"role": "assistant", "content": "short"}]
    assert rows[1].messages[0] == {"role": "system", "content": "Default system."}


def test_a_datasets_directory_is_accepted(tmp_path):
    from datasets import Dataset

    Dataset.from_list([chat("q", "a"), chat("q2", "a2")]).save_to_disk(str(tmp_path / "ds"))
    rows, problems = read_rows(tmp_path / "ds")
    assert not problems and [r.line for r in rows] == [1, 2]


def test_split_is_deterministic_disjoint_and_independent_of_file_order():
    from packager.stages.data.rows import Row

    rows = [Row("f", i, [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}], "chat")
            for i in range(1, 101)]
    train, eval_ = split_rows(rows, eval_fraction=0.1, seed=42)
    assert len(eval_) == 10 and len(train) == 90
    assert not {r.key for r in train} & {r.key for r in eval_}
    train2, eval2 = split_rows(list(reversed(rows)), eval_fraction=0.1, seed=42)
    assert {r.key for r in eval2} == {r.key for r in eval_}
    _, eval3 = split_rows(rows, eval_fraction=0.1, seed=43)
    assert {r.key for r in eval3} != {r.key for r in eval_}


def test_tokenizer_without_chat_template_fails_with_how_to_fix(tiny_llama_copy):
    config = json.loads((tiny_llama_copy / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (tiny_llama_copy / "tokenizer_config.json").write_text(json.dumps(config))
    (tiny_llama_copy / "chat_template.jinja").unlink(missing_ok=True)
    from packager.errors import InputFileError

    with pytest.raises(InputFileError) as info:
        load_tokenizer(tiny_llama_copy)
    assert "base.chat_template" in info.value.hint
    template = tiny_llama_copy / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    assert load_tokenizer(tiny_llama_copy, chat_template=template).tokenizer.chat_template.startswith("{% for")


def test_missing_pad_token_becomes_eos_and_is_said(tiny_llama_copy):
    config = json.loads((tiny_llama_copy / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (tiny_llama_copy / "tokenizer_config.json").write_text(json.dumps(config))
    prepared = load_tokenizer(tiny_llama_copy)
    assert prepared.tokenizer.pad_token == prepared.tokenizer.eos_token
    assert any("pad" in n for n in prepared.notes)


def test_assistant_mask_covers_answers_and_their_stop_token_only(tiny_llama_dir):
    tok = load_tokenizer(tiny_llama_dir).tokenizer
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "question one"},
                {"role": "assistant", "content": "answer one"}, {"role": "user", "content": "question two"},
                {"role": "assistant", "content": "answer two"}]
    enc = tokenize_with_assistant_mask(tok, messages)
    learned = tok.decode([i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m])
    assert learned.replace("\n", "") == "answer one<|im_end|>answer two<|im_end|>"


def test_example_dataset_is_clean_and_large_enough(tiny_llama_dir):
    report = check_dataset(EXAMPLE, max_seq_length=512, tokenizer=load_tokenizer(tiny_llama_dir).tokenizer)
    assert not report.problems
    assert len(report.train_rows) >= 300 and report.token_stats["max"] <= 512


def test_data_check_cli(runner, tmp_path, tiny_llama_dir):
    from packager.cli import cli

    good = write_jsonl(tmp_path / "good.jsonl", [chat(f"q{i}", f"a{i}") for i in range(20)])
    result = runner.invoke(cli, ["data", "check", str(good), "--model", str(tiny_llama_dir)])
    assert result.exit_code == 0, result.output
    assert "18 train rows, 2 eval rows" in result.output and "suggested max_seq_length" in result.output
    assert "<|im_start|>user" in result.output
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat("q", "a"), {"messages": []}])
    result = runner.invoke(cli, ["data", "check", str(bad), "--json"])
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["errors"][0]["line"] == 2 and "no assistant turn" in report["errors"][0]["message"]


def test_files_as_other_tools_write_them_load(tmp_path):
    """A byte-order mark and CRLF endings (Windows tools) and OpenAI-style text parts: the same rows."""
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                       {"type": "text", "text": "there"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}]}
    plain = {"messages": [{"role": "user", "content": "Hi\nthere"}, {"role": "assistant", "content": "Hello"}]}
    windows = tmp_path / "windows.jsonl"
    windows.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(json.dumps(r).encode() for r in (parts, plain)) + b"\r\n")
    rows, problems = read_rows(windows)
    assert problems == [] and [r.messages for r in rows] == [plain["messages"]] * 2


TEXT_ONLY = ": packager trains text models, so content parts must be text parts"


@pytest.mark.parametrize("content, field, message", [
    ([{"type": "image_url", "image_url": {"url": "http://example.invalid/cat.png"}}], "messages[0].content[0]",
     "a part of type 'image_url'" + TEXT_ONLY),
    ([{"type": "text", "text": "look:"}, {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}],
     "messages[0].content[1]", "a part of type 'input_audio'" + TEXT_ONLY),
    (["a bare string"], "messages[0].content[0]", "a string where a {type, text} part belongs" + TEXT_ONLY),
    ([{"type": "text", "text": 3}], "messages[0].content[0].text", "a text part needs a string 'text'"),
    ([], "messages[0].content", "empty content"),
    ({"text": "hi"}, "messages[0].content", "must be a string or a list of text parts, got an object"),
], ids=["image", "audio", "bare-string", "text-not-string", "no-parts", "object"])
def test_content_that_is_not_text_is_refused_naming_the_part(tmp_path, content, field, message):
    data = tmp_path / "parts.jsonl"
    row = {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "ok"}]}
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "fine"},
                                             {"role": "assistant", "content": "ok"}]}) + "\n" + json.dumps(row) + "\n")
    rows, problems = read_rows(data)
    assert len(rows) == 1 and [str(p) for p in problems] == [f"{data}:2 [{field}]: {message}"]


def test_text_in_other_encodings_is_named_with_its_line(tmp_path):
    from packager.errors import InputFileError

    row = json.dumps({"messages": [{"role": "user", "content": "caf\u00e9"}, {"role": "assistant", "content": "ok"}]},
                     ensure_ascii=False)
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(row.encode() + b"\n" + row.encode("latin-1") + b"\n")
    rows, problems = read_rows(latin)
    assert len(rows) == 1 and [str(p) for p in problems] == [f"{latin}:2: not UTF-8 text (byte 0xe9 at column 47)"]
    utf16 = tmp_path / "unicode.jsonl"
    utf16.write_bytes(row.encode("utf-16"))
    with pytest.raises(InputFileError, match="UTF-16 text .* save it as UTF-8"):
        read_rows(utf16)


CONVERSATIONS = [chat(f"question {i}", f"answer {i}") for i in range(4)]


def write_table(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("form", ["json-array", "csv-messages", "tsv-instruction", "parquet"])
def test_data_in_the_forms_other_tools_export_loads_as_the_same_rows(tmp_path, form):
    """JSON arrays, CSV/TSV (a conversation in a cell as JSON text, or instruction columns) and Parquet (nested
    lists of structs): the same conversations as the JSONL."""
    expected, _ = read_rows(write_jsonl(tmp_path / "same.jsonl", CONVERSATIONS))
    if form == "json-array":
        path = tmp_path / "rows.json"
        path.write_text(json.dumps(CONVERSATIONS, indent=2))
    elif form == "csv-messages":
        path = write_table(tmp_path / "rows.csv", [{"id": i, "messages": json.dumps(r["messages"])}
                                                    for i, r in enumerate(CONVERSATIONS)])
    elif form == "tsv-instruction":
        path = write_table(tmp_path / "rows.tsv", [{"instruction": f"question {i}", "input": "",
                                                    "output": f"answer {i}"} for i in range(4)], delimiter="\t")
    else:
        path = write_parquet(tmp_path / "rows.parquet", CONVERSATIONS)
    rows, problems = read_rows(path)
    assert problems == [] and [r.messages for r in rows] == [r.messages for r in expected]


def test_every_form_names_its_problems_where_the_user_finds_them(tmp_path):
    """A JSON array names the line an element starts on; a CSV the line its record starts on (quoted cells may
    span lines); Parquet the row."""
    bad = {"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"},
                        {"role": "assistant", "content": "z"}]}
    array = tmp_path / "rows.json"
    array.write_text(json.dumps([CONVERSATIONS[0], bad], indent=1))
    table = write_table(tmp_path / "rows.csv", [{"messages": json.dumps(CONVERSATIONS[0]["messages"], indent=1)},
                                                {"messages": json.dumps(bad["messages"])},
                                                {"messages": "[not json"}])
    parquet = write_parquet(tmp_path / "rows.parquet", [CONVERSATIONS[0], bad])
    two_users = "[messages[1].role]: two user turns in a row (messages[0] and messages[1]); turns must alternate"
    assert [str(p).split(";")[0] for p in read_rows(array)[1]] == [f"{array}:14 {two_users.split(';')[0]}"]
    csv_problems = [str(p) for p in read_rows(table)[1]]
    assert csv_problems[0].startswith(f"{table}:12 {two_users.split(';')[0]}"), csv_problems
    assert csv_problems[1].startswith(f"{table}:13 [messages]: JSON text that does not parse"), csv_problems
    assert len(csv_problems) == 2, csv_problems
    assert [str(p).split(";")[0] for p in read_rows(parquet)[1]] == [f"{parquet}, row 2 {two_users.split(';')[0]}"]


def test_broken_files_of_each_form_are_named(tmp_path):
    from packager.errors import InputFileError

    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps(CONVERSATIONS, indent=2)[:-40])
    rows, problems = read_rows(cut)
    assert len(rows) == 3 and len(problems) == 1 and str(problems[0]).startswith(f"{cut}:") \
        and "invalid JSON" in str(problems[0])
    ragged = tmp_path / "ragged.csv"
    ragged.write_text('instruction,output\n"q1","a1"\n"q2","a2",extra\n')
    assert [str(p) for p in read_rows(ragged)[1]] == [f"{ragged}:3: 3 cells, but the header has 2"]
    fake = tmp_path / "fake.parquet"
    fake.write_text("instruction,output\n")
    with pytest.raises(InputFileError, match=r"fake\.parquet: not a Parquet file"):
        read_rows(fake)


def test_columns_named_otherwise_are_mapped_and_problems_use_the_datas_names(tmp_path):
    """Hub datasets name their fields as they like (conversation, prompt/response): data.columns maps them,
    and a problem names the data's own column."""
    rows = [{"conversation": r["messages"], "source": "x"} for r in CONVERSATIONS]
    rows.append({"conversation": [{"role": "user", "content": "only a question"}], "source": "x"})
    path = write_parquet(tmp_path / "rows.parquet", rows)
    read, problems = read_rows(path, columns={"messages": "conversation"})
    assert [r.messages for r in read] == [r["messages"] for r in CONVERSATIONS]
    assert [str(p) for p in problems] == [f"{path}, row 5 [conversation]: no assistant turn: nothing to learn from "
                                          "this row"]
    unmapped, problems = read_rows(path)
    assert not unmapped and "or name the columns that hold them with data.columns" in str(problems[0])


@pytest.mark.parametrize("record, field, message", [
    (None, None, "expected an object with 'messages' (or 'instruction' and 'output'), got null"),
    ([], None, "expected an object with 'messages' (or 'instruction' and 'output'), got an array"),
    ("text", None, "expected an object with 'messages' (or 'instruction' and 'output'), got a string"),
    ({"instruction": None, "output": "x"}, "instruction", "missing"),
    ({"instruction": "q", "output": 3}, "output", "must be a string, got a number"),
    ({"instruction": "q", "output": "a", "input": True}, "input", "must be a string, got true"),
], ids=["null", "array", "string", "null-instruction", "number-output", "bool-input"])
def test_values_of_the_wrong_kind_are_named_in_jsons_words(tmp_path, record, field, message):
    """A null instruction had crashed the data check (None + str); Python type names (NoneType, dict) had
    reached users who wrote JSON."""
    rows, problems = read_rows(write_jsonl(tmp_path / "odd.jsonl", [json.dumps(record)]))
    assert not rows and [(p.field, p.message) for p in problems] == [(field, message)]


TICKETS_CARD = """---
configs:
- config_name: tickets
  data_files:
  - split: train
    path: data/train-*.parquet
  - split: test
    path: data/test-*.parquet
---
# Tickets
"""


def parquet_bytes(rows: list[dict]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def tickets_repo(rows: list[dict], held_out: list[dict]) -> dict[str, bytes | str]:
    """A dataset repository as the Hub holds one: a card whose configs name the splits' files, Parquet shards
    (LFS files), fields named as the dataset likes (conversation)."""
    return {"README.md": TICKETS_CARD,
            "data/train-00000-of-00001.parquet": parquet_bytes([{"conversation": r["messages"]} for r in rows]),
            "data/test-00000-of-00001.parquet": parquet_bytes([{"conversation": r["messages"]} for r in held_out])}


@pytest.fixture
def hub_datasets(local_hub, monkeypatch, tmp_path):
    """The real huggingface_hub pointed at a local Hub (tests/support/hub_server.py); `datasets` caching here."""
    import datasets

    from support.hub_server import point_huggingface_hub_at

    point_huggingface_hub_at(local_hub, monkeypatch, tmp_path / "hf-home")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    return local_hub


def test_a_hub_dataset_is_read_at_its_pinned_commit_and_recorded_like_a_base_model(hub_datasets, tmp_path):
    from packager.config import DataConfig, HubDataset
    from packager.run.directory import Run
    from packager.run.manifest import read_manifest
    from packager.stages.data.split import prepare_data

    train, held_out = [chat(f"ticket {i}", f"label {i}") for i in range(6)], [chat("held", "out")]
    first = hub_datasets.add_repo("org/tickets", tickets_repo(train, held_out), repo_type="dataset")
    spec = HubDataset(hub="org/tickets", config="tickets", split="train")
    report = check_dataset(spec, eval_path=spec.model_copy(update={"split": "test"}),
                           columns={"messages": "conversation"})
    assert not report.errors and [r.messages for r in report.train_rows] == [r["messages"] for r in train]
    assert [r.messages for r in report.eval_rows] == [held_out[0]["messages"]]
    assert report.sources["train"].pinned == {"hub": "org/tickets", "revision": None, "commit": first,
                                              "config": "tickets", "split": "train"}

    run = Run.create(tmp_path / "run")
    data_cfg = DataConfig(train=spec, eval=spec.model_copy(update={"split": "test"}), eval_fraction=0.1,
                          seed=1, max_seq_length=256, columns={"messages": "conversation"})
    prepare_data(run, data_cfg, tokenizer=None)
    stage = read_manifest(run.path).stages["data"]
    assert stage.parameters["train"] == f"org/tickets@{first[:12]} (tickets) [train]"
    assert stage.parameters["train_hub"]["commit"] == stage.parameters["eval_hub"]["commit"] == first
    shard = next(i for i in stage.inputs if i.path.endswith("train-00000-of-00001.parquet"))
    assert shard.sha256 == hashlib.sha256(tickets_repo(train, held_out)["data/train-00000-of-00001.parquet"]).hexdigest()

    newer = hub_datasets.add_repo("org/tickets", tickets_repo(train[:3], held_out), repo_type="dataset")
    moved = check_dataset(spec, columns={"messages": "conversation"}, eval_fraction=0.5)
    assert moved.sources["train"].pinned["commit"] == newer and len(moved.train_rows + moved.eval_rows) == 3
    pinned = check_dataset(spec.model_copy(update={"revision": first}), columns={"messages": "conversation"})
    assert pinned.sources["train"].pinned["commit"] == first and len(pinned.train_rows + pinned.eval_rows) == 6


def test_a_hub_dataset_that_is_not_there_is_named(hub_datasets):
    from packager.config import HubDataset
    from packager.errors import InputFileError, MissingPathError

    hub_datasets.add_repo("org/tickets", tickets_repo([chat()], [chat()]), repo_type="dataset")
    with pytest.raises(MissingPathError, match="org/nothing: no such dataset repository on the Hub"):
        check_dataset(HubDataset(hub="org/nothing"))
    with pytest.raises(MissingPathError, match="org/tickets: has no revision 'v9'"):
        check_dataset(HubDataset(hub="org/tickets", revision="v9"))
    with pytest.raises(InputFileError, match=r"org/tickets: at [0-9a-f]{12}: .*validation"):
        check_dataset(HubDataset(hub="org/tickets", config="tickets", split="validation"))


def test_a_downloaded_hub_dataset_is_checked_again_offline_and_when_the_hub_is_gone(hub_datasets, runner,
                                                                                  monkeypatch):
    """`packager data check hf://datasets/...@REV` once online, then with HF_HUB_OFFLINE=1 and with the Hub
    closed: the same rows from huggingface_hub's cache, pinned to the same commit, and not one request."""
    from huggingface_hub import constants

    from packager.cli import cli
    from packager.config import HubDataset
    from packager.errors import MissingPathError

    train = [chat(f"ticket {i}", f"label {i}") for i in range(4)]
    first = hub_datasets.add_repo("org/tickets", tickets_repo(train, [chat()]), repo_type="dataset")
    hub_datasets.tag("org/tickets", "v1", repo_type="dataset")
    hub_datasets.add_repo("org/tickets", tickets_repo(train[:1], [chat()]), repo_type="dataset")  # main moves on

    def check(url: str) -> dict:
        done = runner.invoke(cli, ["data", "check", url, "--subset", "tickets", "--column",
                                   "messages=conversation", "--eval-fraction", "0.25", "--json"])
        assert done.exit_code == 0, done.output
        report = json.loads(done.stdout)
        return {"rows": report["train_rows"] + report["eval_rows"], **report["sources"]["train"]["pinned"]}

    online = {rev: check(f"hf://datasets/org/tickets@{rev}") for rev in ("v1", first)}
    assert online["v1"] == {"rows": 4, "hub": "org/tickets", "revision": "v1", "commit": first,
                            "config": "tickets", "split": "train"}
    seen = len(hub_datasets.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1, as read at import
    assert {rev: check(f"hf://datasets/org/tickets@{rev}") for rev in online} == online
    assert len(hub_datasets.requests) == seen  # not one request
    with pytest.raises(MissingPathError, match=r"org/tickets: could not fetch from the Hugging Face Hub "
                                               r"\(revision 'v2'\): not in the local cache, and HF_HUB_OFFLINE") as e:
        check_dataset(HubDataset(hub="org/tickets", revision="v2", config="tickets"))
    assert "local file" in e.value.hint

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub_datasets.close()  # online, but the Hub is out of reach: the cached snapshot still serves
    assert check("hf://datasets/org/tickets@v1") == online["v1"]

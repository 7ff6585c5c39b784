"""Where rows come from: local files in the forms other tools export, ``datasets`` directories, and datasets on
the Hugging Face Hub, pinned to the commit they resolve to. Every source yields its records numbered as the
user can find them again: by line for text files (JSONL, a JSON array, CSV/TSV), by row for Parquet and
``datasets``.

JSONL as other tools write it loads too: a UTF-8 byte-order mark (Windows tools) and CRLF line endings.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from packager.config import HubDataset
from packager.errors import InputFileError, MissingPathError
from packager.hub_snapshot import download_snapshot


DataSpec = Path | HubDataset
Record = tuple[int, Any, "str | None"]  # (line or row number, the record, why it could not be read)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
TABLES = {".csv": ",", ".tsv": "\t"}


@dataclass
class Source:
    """One dataset as read: its name in messages, how its records are numbered, and what to record of it."""

    name: str
    unit: str  # "line" or "row"
    records: Iterator[Record]
    files: list[Path] = field(default_factory=list)
    """Every file it was read from, for the manifest."""
    pinned: dict[str, Any] | None = None
    """A Hub dataset: id, the commit its revision resolved to, config and split."""


def open_source(spec: DataSpec | str) -> Source:
    """The records of a local file or directory, or of a Hub dataset (downloaded through the Hub cache)."""
    if isinstance(spec, HubDataset):
        return _hub_source(spec)
    path = Path(spec)
    if not path.exists():
        raise MissingPathError(path, "dataset not found")
    if path.is_dir():
        return Source(str(path), "row", _saved_dataset_records(path),
                      sorted(p for p in path.rglob("*") if p.is_file()))
    if not path.is_file():
        raise InputFileError(path, "not a file (a JSONL, JSON, CSV or Parquet file, or a `datasets` directory, "
                                   "was expected)")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return Source(str(path), "row", _parquet_records(path), [path])
    if suffix in TABLES:
        return Source(str(path), "line", _table_records(path, TABLES[suffix]), [path])
    if suffix == ".json" and _starts_with(path, b"["):
        return Source(str(path), "line", _json_array_records(path), [path])
    return Source(str(path), "line", _jsonl_records(path), [path])


def _starts_with(path: Path, char: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip().startswith(char)


def _jsonl_records(path: Path) -> Iterator[Record]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(_UTF16_BOMS):
                raise InputFileError(path, "UTF-16 text (a Windows \"Unicode\" save); save it as UTF-8")
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield number, None, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
                continue
            if not text.strip():
                continue
            try:
                yield number, json.loads(text), None
            except ValueError as exc:
                yield number, None, f"invalid JSON: {exc}"


def _utf8_text(path: Path) -> str:
    raw = path.read_bytes()
    if raw.startswith(_UTF16_BOMS):
        raise InputFileError(path, "UTF-16 text (a Windows \"Unicode\" save); save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise InputFileError(path, f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save it as UTF-8",
                             line=line) from None


def _json_array_records(path: Path) -> Iterator[Record]:
    """A JSON array of records (what ``json.dump(rows)`` and many exporters write), each numbered by the line
    it starts on. Decoded element by element, so a broken element is named at its line."""
    text = _utf8_text(path)
    decoder = json.JSONDecoder()
    at = _skip_space(text, text.index("[") + 1)
    if at < len(text) and text[at] == "]":
        return
    while True:
        line = text.count("\n", 0, at) + 1
        try:
            record, at = decoder.raw_decode(text, at)
        except ValueError as exc:
            yield line, None, f"invalid JSON: {exc}"
            return  # the rest cannot be told apart reliably
        yield line, record, None
        at = _skip_space(text, at)
        if at < len(text) and text[at] == ",":
            at = _skip_space(text, at + 1)
            continue
        if at >= len(text) or text[at] != "]" or text[at + 1:].strip():
            yield text.count("\n", 0, at) + 1, None, "invalid JSON: expected ',' or the array's closing ']'"
        return


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def _table_records(path: Path, delimiter: str) -> Iterator[Record]:
    """CSV/TSV with a header row; each record numbered by the line it starts on (a quoted cell may span
    lines). Cells are text: a ``messages`` cell holds the conversation as JSON."""
    reader = csv.reader(io.StringIO(_utf8_text(path), newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise InputFileError(path, f"not {'CSV' if delimiter == ',' else 'TSV'}: {exc}", line=1) from None
    line = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield line, None, f"not {'CSV' if delimiter == ',' else 'TSV'}: {exc}"
            return
        if any(cell.strip() for cell in cells):
            if len(cells) != len(header):
                yield line, None, f"{len(cells)} cells, but the header has {len(header)}"
            else:
                yield line, {k: v for k, v in zip(header, cells) if v != ""}, None
        line = reader.line_num + 1


def _parquet_records(path: Path) -> Iterator[Record]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as exc:
        raise InputFileError(path, f"not a Parquet file: {exc}") from None
    number = 0
    for batch in table.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            number += 1
            yield number, record, None


def _saved_dataset_records(path: Path) -> Iterator[Record]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise InputFileError(path, f"not a `datasets` directory saved with save_to_disk: {exc}") from None
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise InputFileError(path, f"DatasetDict has splits {list(ds)}; expected a 'train' split")
        ds = ds["train"]
    for number, record in enumerate(ds, start=1):
        yield number, record, None


def _hub_source(spec: HubDataset) -> Source:
    """Download the repository at the commit ``spec.revision`` resolves to (through huggingface_hub's cache,
    so a second read needs no Hub, HF_HUB_OFFLINE=1 included), then let ``datasets`` pick the config and split
    from the files, as it does for any dataset repository (its README's ``configs:``, else the file names)."""
    directory, commit = download_snapshot(
        spec.hub, repo_type="dataset", revision=spec.revision, allow_patterns=spec.files, instead="a local file",
        revision_hint="set the dataset's revision (data.train.revision, or hf://datasets/ORG/NAME@REVISION) to "
                      "one of its branches or tags, or a full commit sha")
    from datasets import load_dataset

    try:
        ds = load_dataset(str(directory), name=spec.config, split=spec.split)
    except (ValueError, FileNotFoundError) as exc:  # an unknown config or split, or no data files in it
        raise InputFileError(spec.hub, f"at {commit[:12]}: {exc}",
                             hint="check data.train/data.eval config: and split: against the dataset's card") from None
    name = f"{spec.hub}@{commit[:12]}" + (f" ({spec.config})" if spec.config else "") + f" [{spec.split}]"
    pinned = {"hub": spec.hub, "revision": spec.revision, "commit": commit, "config": spec.config,
              "split": spec.split}
    records = ((number, record, None) for number, record in enumerate(ds, start=1))
    files = sorted(p for p in directory.rglob("*") if p.is_file() and ".cache" not in p.parts)
    return Source(name, "row", records, files, pinned)

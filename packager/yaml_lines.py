"""YAML as people write it by hand: every key keeps its line for messages, a key given twice is an error, and
schema errors are told at the lines they are about.

``yaml.safe_load`` forgets where things were, so a schema error can only say ``train.max_steps``, and it
lets the last of two equal keys win without a word (YAML 1.2 calls repeated keys an error; PyYAML does not
check). Here the document is composed once: the node tree gives each key's line and the repeated keys, and
the same nodes are then constructed with the safe constructor, so what is loaded is exactly ``safe_load``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


Location = tuple[str, ...]


class YamlFileError(ValueError):
    """The file cannot be read as YAML at all; ``problems`` are ``(yaml) line L, column C: ...`` lines."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass
class YamlDocument:
    data: Any
    lines: dict[Location, int] = field(default_factory=dict)
    """1-based line of every key (and list item), by its path of keys and item numbers, as strings."""
    problems: list[str] = field(default_factory=list)
    """What the file gets wrong besides its schema (a repeated key), one ``line N: path: message`` each."""

    def line_of(self, location: tuple) -> int | None:
        """The line of ``location``, or of the nearest enclosing key the file has (a missing key's section)."""
        parts = tuple(str(p) for p in location)
        for end in range(len(parts), 0, -1):
            if parts[:end] in self.lines:
                return self.lines[parts[:end]]
        return None


def read_yaml(path: Path) -> YamlDocument:
    """Read one YAML document from ``path`` (UTF-8, a byte-order mark allowed).

    Raises:
        YamlFileError: not UTF-8 text, not YAML, several documents, or a tag the safe loader refuses.
    """
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise YamlFileError([f"(yaml) line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file "
                             "as UTF-8"]) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        words = ", ".join(filter(None, (getattr(exc, "context", None), getattr(exc, "problem", None))))
        raise YamlFileError([f"(yaml) {where}{words or exc}"]) from None
    finally:
        loader.dispose()
    document = YamlDocument(data)
    if node is not None:
        _walk(node, (), document, seen=set())
    return document


def _walk(node: yaml.Node, path: Location, document: YamlDocument, *, seen: set[int]) -> None:
    if id(node) in seen:  # an alias to a node already walked (or to itself)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            here, line = path + (key.value,), key.start_mark.line + 1
            if key.value in first:
                document.problems.append(f"line {line}: {'.'.join(here)}: given twice (also on line "
                                         f"{first[key.value]}); YAML keeps only the last, so keep one")
                for gone in [loc for loc in document.lines if loc[:len(here)] == here]:
                    del document.lines[gone]  # the earlier value is not what was loaded: never point there
            first.setdefault(key.value, line)
            document.lines[here] = line
            _walk(value, here, document, seen=seen)
    elif isinstance(node, yaml.SequenceNode):
        for number, item in enumerate(node.value):
            here = path + (str(number),)
            document.lines.setdefault(here, item.start_mark.line + 1)
            _walk(item, here, document, seen=seen)


def schema_problems(errors: list[dict], document: YamlDocument | None = None) -> list[str]:
    """pydantic's ``ValidationError.errors()`` as ``line N: path.to.field: message``, in the user's words (the
    line when the file has one)."""
    problems: list[tuple[int, str]] = []
    for err in errors:
        keys = [str(p) for p in err["loc"] if not str(p).startswith("(")]  # "(hub)": the branch of a union
        loc = ".".join(keys) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `packager init` writes every key with a comment)"
        elif err["type"] in {"model_type", "dict_type"}:
            msg = f"expected a section (indented key: value lines), got {shape_of(err.get('input'))}"
        elif err["type"] not in {"missing", "value_error", "literal_error"} and not isinstance(
                err.get("input"), (dict, list)):
            msg += f" (got {err['input']!r})"
        line = document.line_of(err["loc"]) if document is not None else None
        problems.append((line or 0, f"{f'line {line}: ' if line else ''}{loc}: {msg}"))
    return [text for _, text in sorted(problems, key=lambda p: p[0])]


def shape_of(value: Any) -> str:
    return "a list" if isinstance(value, list) else repr(value)

"""Names that end up in file paths or image tags, and text that ends up in rendered files: validated once, at
the edge."""

from __future__ import annotations

import re

from packager.errors import UnsafeInputError


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
"""A Hugging Face Hub repository id: owner/name."""
NAME_RULE = ("must be 1-128 characters of letters, digits, '.', '_' or '-', start with a letter or digit, "
             "and contain no '..'")


def check_name(value: str) -> str:
    """Accept letters, digits, '.', '_', '-' (starting with a letter or digit); refuse traversal and shell characters."""
    if not _NAME.fullmatch(value) or ".." in value:
        raise ValueError(NAME_RULE)
    return value


def validate_name(value: str, *, what: str = "name") -> str:
    try:
        return check_name(value)
    except ValueError:
        raise UnsafeInputError(f"{what} {value!r}", NAME_RULE) from None


_LINE_BREAKS = ("\n", "\r", "\x0b", "\x0c", "\x85", "\u2028", "\u2029")


def check_one_line(value: str | None) -> str | None:
    """A value written into one line of a rendered file (a Dockerfile comment or LABEL, a card's front matter,
    a Modelfile string): a line break there would start an instruction of its own."""
    if value is None:
        return value
    if any(c in value for c in _LINE_BREAKS) or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{value[:60]!r} has a line break or control character; it is written into one line of "
                         "Dockerfiles, Modelfiles and model cards")
    return check_modelfile_text(value)


def check_modelfile_text(value: str | None) -> str | None:
    """Text inside a Modelfile triple-quoted string: \"\"\" would end it, and Ollama's parser deletes other
    non-printable characters than line breaks and tabs (its parser.go), so the model would get other text."""
    if value is None:
        return value
    if '"""' in value:
        raise ValueError('contains """, which ends a Modelfile string')
    hidden = sorted({f"U+{ord(c):04X}" for c in value if not (c.isprintable() or c in "\n\t")})
    if hidden:
        raise ValueError(f"has non-printable characters ({', '.join(hidden)}) that Ollama's Modelfile parser "
                         "deletes")
    return value


def check_pinned_image(value: str) -> str:
    """A base image named by an explicit tag other than ``latest``, or by digest: a build is then repeatable."""
    name = value.split("@", 1)[0]
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else None
    if "@sha256:" not in value and (tag is None or tag == "latest"):
        raise ValueError(f"{value!r} is not pinned: give an explicit tag other than 'latest' (or a digest)")
    return value

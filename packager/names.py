"""Names that end up in file paths or image tags: validated once, at the edge."""

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

"""Jinja templates from ``templates/`` (shipped in the wheel as ``packager/templates``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


def templates_dir() -> Path:
    shipped = Path(__file__).parent / "templates"
    return shipped if shipped.is_dir() else Path(__file__).parent.parent / "templates"


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(templates_dir()), autoescape=jinja2.select_autoescape(
        ["html", "html.j2"]), undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def render(name: str, **context) -> str:
    return _environment().get_template(name).render(**context)

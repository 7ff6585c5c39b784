"""The Jinja templates packager renders (Dockerfiles, Modelfile, compose, Kubernetes, cards, reports), beside
this module, and the one function that renders them."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=2)
def _environment(line_statements: bool):
    import json

    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=jinja2.select_autoescape(
        ["html", "html.j2"]), undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        trim_blocks=line_statements, lstrip_blocks=line_statements)
    # JSON as Dockerfiles, compose files and Modelfiles read it (Jinja's tojson escapes < and > for HTML).
    env.filters["json"] = lambda value: json.dumps(value, ensure_ascii=False)
    return env


def render(name: str, **context) -> str:
    """Render ``templates/name``; files under ``containers/`` put ``{% ... %}`` on lines of their own."""
    return _environment(name.startswith("containers/")).get_template(name).render(**context)

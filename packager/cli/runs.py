"""``packager verify`` and ``packager report``: what a run recorded, re-checked and shown."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--key", "public_key", type=click.Path(dir_okay=False, path_type=Path),
              help="Also check the run's signature with this public key (packager sign).")
def verify(run_dir: Path, as_json: bool, public_key: Path | None) -> None:
    """Re-hash every file a run recorded; report modified, missing and unrecorded files.

    Exit status 1 when anything does not match.

    \b
    Example:
      packager verify runs/example
    """
    from packager.errors import IntegrityError
    from packager.publish.signing import verify_signature
    from packager.run.verify import verify_run

    report = verify_run(run_dir)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not report.ok:
        raise IntegrityError(run_dir, report.problems)
    if not as_json:
        click.echo(report.summary())
    if public_key is not None:
        signed = verify_signature(run_dir, public_key=public_key)
        click.echo(f"{run_dir}: signature OK, {signed} signed files, manifest as signed")


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"),
              show_default=True, help="Where to write the page (outside the run: it is a view of the manifest).")
def report(run_dir: Path, out: Path) -> None:
    """One HTML page about a run: loss curve, fine-tune vs base, sample answers, merge and GGUF parity,
    serving contexts, smoke results and the manifest digest.

    \b
    Example:
      packager report runs/example -o example-report.html
    """
    from packager.pipeline.report import write_run_report

    click.echo(f"wrote {write_run_report(run_dir, out)}")

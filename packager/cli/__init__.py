"""The ``packager`` command line: thin Click commands over the library, one module per command group.

A command parses its options, calls one library function and prints the result's own summary. Errors from
the library reach :class:`PackagerGroup`, the one place that turns them into a message and an exit code.
Library modules are imported inside the commands, so ``packager --help`` starts without torch.
"""

from __future__ import annotations

import os
import traceback

import click

import packager
from packager.errors import EXIT_FAILURE, PackagerError

DEBUG_VARIABLE = "PACKAGER_DEBUG"


def _debug() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0", "false", "no")


class PackagerGroup(click.Group):
    """Turns every PackagerError into one paragraph on stderr and its exit code (1 failure, 2 bad input)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PackagerError as exc:
            if _debug():
                traceback.print_exc()
            click.echo(f"error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            if _debug():
                traceback.print_exc()
            click.echo("interrupted: nothing partial was recorded; re-run the same command to continue",
                       err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug, not a user mistake: say so, briefly
            if _debug():
                raise
            click.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
            click.echo(f"hint: this is a bug in packager; re-run with {DEBUG_VARIABLE}=1 for the traceback "
                       "and report it", err=True)
            ctx.exit(EXIT_FAILURE)


@click.group(cls=PackagerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(packager.__version__, prog_name="packager")
@click.option("-v", "--verbose", is_flag=True,
              help="Show what the libraries underneath print: their warnings, logs and progress bars (otherwise "
                   "kept in RUN/.packager/logs/library.log).")
def cli(verbose: bool) -> None:
    """packager: an LLM fine-tune from data to a serving image you can trust.

    \b
    data check -> train -> eval -> merge -> export -> containerize -> smoke -> push
    Every stage records what it read and wrote, by sha256, in RUN/manifest.json.

    \b
    Example:
      packager init myproject && cd myproject
      packager base example base/ && packager verify base/
    """
    if not (verbose or _debug()):
        from packager.terminal import capture_library_output

        capture_library_output()


def _register() -> None:
    from packager.cli import base, data, model, pipeline, publishing, runs, serving, training

    for command in (pipeline.init, base.base, runs.verify, data.data, training.eval_base, training.train,
                    training.eval_, model.merge, model.export, serving.containerize, serving.smoke, publishing.push,
                    publishing.sign,
                    publishing.keygen, pipeline.deploy, runs.report, pipeline.demo):
        cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="packager")

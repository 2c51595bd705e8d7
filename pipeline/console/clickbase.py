"""The click classes every verb uses: one-line errors with stable exit codes, and an
argparse-style ``usage:`` line.

    PipelineError            ``sonic-pipeline: <code>: <message>`` on stderr, its exit code
                             (3 configuration, 4 a service unreachable, 1 the rest)
    a verb returning N != 0  exit N
    Ctrl-C                   exit 130
    usage errors             click's message, exit 2
"""

from __future__ import annotations

from typing import Any

import click

from pipeline.errors import PipelineError

PROG = "sonic-pipeline"
EXIT_INTERRUPTED = 130


def fail(exc: PipelineError) -> None:
    """Print ``exc`` as one line on stderr and exit with its code."""
    click.echo(f"{PROG}: {exc}", err=True)
    raise click.exceptions.Exit(exc.exit_code)


class Command(click.Command):
    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, " ".join(self.collect_usage_pieces(ctx)),
                              prefix="usage: ")


class Group(click.Group):
    """A group of verbs; its commands and sub-groups use these classes too."""

    command_class = Command

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, " ".join(self.collect_usage_pieces(ctx)),
                              prefix="usage: ")

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
        except PipelineError as exc:
            fail(exc)
        except KeyboardInterrupt:
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        if isinstance(result, int) and not isinstance(result, bool) and result:
            raise click.exceptions.Exit(result)
        return result


Group.group_class = Group

#: ``--json``: machine-readable output on stdout (every read verb has it).
json_option = click.option("--json", "as_json", is_flag=True,
                           help="print JSON (for scripts) instead of tables")

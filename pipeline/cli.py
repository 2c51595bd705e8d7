"""``sonic-pipeline``: the operator's command line (a public contract: verbs stay stable).

    sonic-pipeline settings                 print the effective settings (secrets masked)
    sonic-pipeline db upgrade|downgrade|current [REVISION]
    sonic-pipeline topics create            create the missing topics
    sonic-pipeline worker [--pool all|gpu|cpu|io]   run Celery workers for a pool
    sonic-pipeline flower                   Flower with basic auth and persistent state
    sonic-pipeline bridge                   the Kafka -> Celery bridge (python -m bridge)
    sonic-pipeline serve [--host H --port P]   the HTTP service
    sonic-pipeline submit --image I --audio A [--wait] [...]   publish one job
    sonic-pipeline status ID                where a job is, and why
    sonic-pipeline show ID                  a task's row and its events (JSON)
    sonic-pipeline list [--status S --tenant T --code C --since 1h]
    sonic-pipeline events ID                a job's timeline
    sonic-pipeline cancel ID...             cancel jobs
    sonic-pipeline retry ID                 a finished job again, as a new linked task
    sonic-pipeline dlq list|replay          dead letters, and replaying them
    sonic-pipeline top [--once]             a live view of the fleet
    sonic-pipeline housekeeping [--older-than S] [--dry-run]   sweep finished jobs' work dirs
    sonic-pipeline render --image I --audio A -o OUT.mp4 [knobs]   one job in this process
    sonic-pipeline credentials [--enable KEY_ID]   the remote engine's key pool

Read verbs take ``--json``. Exit codes: 0 ok, 2 usage, 3 configuration error, 4 a service
cannot be reached, 130 interrupted, 1 anything else.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click
from pydantic import ValidationError

from pipeline import commands
from pipeline.console import verbs, verbs_fleet
from pipeline.console.clickbase import PROG, Group
from pipeline.errors import EXIT_CONFIG
from pipeline.settings import describe_error, load

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=Group, context_settings=CONTEXT, help=(
    "Operate sonic-pipeline: run its services, submit and follow jobs, inspect the fleet. "
    "Read verbs take --json. Exit codes: 0 ok, 1 failure, 2 usage, 3 configuration "
    "error, 4 a service cannot be reached, 130 interrupted."))
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Read the settings once, before any verb reaches for a service."""
    try:
        ctx.obj = load()
    except ValidationError as exc:
        click.echo(f"{PROG}: {describe_error(exc)}", err=True)
        raise click.exceptions.Exit(EXIT_CONFIG) from None


for _verb in (*commands.VERBS, *verbs.VERBS, *verbs_fleet.VERBS):
    cli.add_command(_verb)


class Parser:
    """Parses a command line the way the CLI would, without running it (the deployment
    files' tests check each command they run): ``parse_args`` raises ``SystemExit(2)`` on
    an unknown verb or option and returns the verbs' names and parameters."""

    def parse_args(self, argv: Sequence[str]) -> list[tuple[str, dict[str, object]]]:
        args, command, parent, name = list(argv), cli, None, PROG
        parsed: list[tuple[str, dict[str, object]]] = []
        try:
            while True:
                if not isinstance(command, click.Group):
                    ctx = command.make_context(name, args, parent=parent,
                                               resilient_parsing=False)
                    parsed.append((name, dict(ctx.params)))
                    return parsed
                ctx, rest = _group_context(command, name, args, parent)
                parsed.append((name, dict(ctx.params)))
                if not rest:
                    raise click.UsageError("missing verb", ctx)
                name, sub, args = command.resolve_command(ctx, rest)
                if sub is None:
                    raise click.UsageError(f"no such verb {name!r}", ctx)
                command, parent = sub, ctx
        except click.exceptions.Exit as exc:
            raise SystemExit(exc.exit_code) from None
        except click.ClickException as exc:
            exc.show()
            raise SystemExit(exc.exit_code) from None


def _group_context(group: click.Group, name: str, args: list[str],
                   parent: click.Context | None) -> tuple[click.Context, list[str]]:
    """``group``'s context with its own options parsed, and every token after them (the
    verb first). ``Group.make_context`` would hold the verb back in a private attribute;
    ``Command.parse_args`` (public) parses the group's options and returns the rest.
    Raises click's usage errors as ``make_context`` does (no arguments at all: the help)."""
    ctx = group.context_class(group, info_name=name, parent=parent,
                              **{**group.context_settings, "resilient_parsing": False})
    with ctx.scope(cleanup=False):
        rest = click.Command.parse_args(group, ctx, args)
    return ctx, rest


def build_parser() -> Parser:
    """The command-line parser (see :class:`Parser`)."""
    return Parser()


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: run one verb, return its exit code."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name=PROG,
                 standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``sonic-pipeline``: the operator's command line (a public contract: verbs stay stable).

    sonic-pipeline settings                 print the effective settings (secrets masked)
    sonic-pipeline db upgrade|downgrade|current [REVISION]
    sonic-pipeline worker [--pool all|gpu|cpu|io]   run Celery workers for a pool
    sonic-pipeline flower                   Flower with basic auth and persistent state
    sonic-pipeline bridge                   the Kafka -> Celery bridge (python -m bridge)
    sonic-pipeline submit --image I --audio A [--callback-url U] [--task-id T]
    sonic-pipeline show TASK_ID             a task's row and its events
    sonic-pipeline housekeeping [--older-than S] [--dry-run]   sweep finished jobs' work dirs
    sonic-pipeline render --image I --audio A -o OUT.mp4 [knobs]   one job in this process
    sonic-pipeline credentials [--enable KEY_ID]   the remote engine's key pool

Exit codes: 0 ok, 2 usage, 3 configuration error, 4 a service cannot be reached,
1 anything else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from pipeline import commands
from pipeline.errors import EXIT_CONFIG, PipelineError
from pipeline.settings import Settings, describe_error, load


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sonic-pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("settings", help="print the effective settings, secrets masked")
    db = sub.add_parser("db", help="database migrations")
    db.add_argument("action", choices=("upgrade", "downgrade", "current"))
    db.add_argument("revision", nargs="?")
    worker = sub.add_parser("worker", help="run Celery workers")
    worker.add_argument("--pool", choices=("all", *commands.POOLS), default="all")
    sub.add_parser("flower", help="run Flower with basic auth and persistent state")
    sub.add_parser("bridge", help="run the Kafka -> Celery bridge")
    submit = sub.add_parser("submit", help="publish one job to the task topic")
    submit.add_argument("--image", required=True)
    submit.add_argument("--audio", required=True)
    submit.add_argument("--callback-url")
    submit.add_argument("--task-id")
    submit.add_argument("--engine")
    submit.add_argument("--min-resolution", type=int, default=512)
    submit.add_argument("--inference-steps", type=int, default=25)
    show = sub.add_parser("show", help="show a task and its events")
    show.add_argument("task_id")
    cancel = sub.add_parser("cancel", help="cancel jobs in any state (final ones are left as "
                            "they are)")
    cancel.add_argument("task_ids", nargs="+", metavar="TASK_ID")
    cancel.add_argument("--reason", default="cancelled by request")
    house = sub.add_parser("housekeeping", help="remove the work dirs of finished jobs")
    house.add_argument("--older-than", type=float, metavar="S",
                       help="seconds untouched (default SONIC_WORKDIR_RETENTION_S)")
    house.add_argument("--dry-run", action="store_true", help="list, remove nothing")
    commands.add_render_arguments(sub.add_parser(
        "render", help="render one job in this process: no Kafka, Redis or PostgreSQL"))
    creds = sub.add_parser("credentials", help="the remote engine's credential pool")
    creds.add_argument("--enable", metavar="KEY_ID", help="re-enable a disabled key")
    return parser


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    handlers: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
        "settings": commands.print_settings,
        "db": commands.db,
        "worker": commands.worker,
        "flower": commands.flower,
        "bridge": commands.bridge,
        "submit": commands.submit,
        "show": commands.show,
        "cancel": commands.cancel,
        "housekeeping": commands.housekeeping,
        "render": commands.render,
        "credentials": commands.credentials,
    }
    return handlers[args.verb](args, settings)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load()
    except ValidationError as exc:
        print(f"sonic-pipeline: {describe_error(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return _dispatch(args, settings)
    except PipelineError as exc:  # exit 3 config, 4 a service, 1 the rest
        print(f"sonic-pipeline: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The operating verbs: settings, db, worker, flower, bridge, serve, topics, housekeeping,
render, credentials. Each is a click command taking the settings (``ctx.obj``); the job
verbs (submit, status, list, ...) are :mod:`pipeline.console.verbs`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from pipeline.celery_config import POOLS
from pipeline.console.clickbase import Command, Group, json_option
from pipeline.settings import Settings


@click.command(cls=Command, name="settings")
@click.pass_obj
def print_settings(settings: Settings) -> int:
    """Print the effective settings as JSON, secrets masked."""
    print(json.dumps(settings.redacted(), indent=2, default=str))
    return 0


@click.group(cls=Group)
def db() -> None:
    """Database migrations (Alembic) on the configured PostgreSQL."""


def _migrate(settings: Settings, action: str, revision: str | None) -> int:
    from pipeline.state import migrate
    from pipeline.state.health import explain_db_error

    try:
        if action == "current":
            migrate.current(settings)
        elif action == "upgrade":
            migrate.upgrade(settings, revision or "head")
        else:
            migrate.downgrade(settings, revision or "base")
    except Exception as exc:  # noqa: BLE001 - turned into one actionable line
        raise explain_db_error(exc, settings) from None
    return 0


@db.command()
@click.argument("revision", required=False)
@click.pass_obj
def upgrade(settings: Settings, revision: str | None) -> int:
    """Migrate up to REVISION (default: head)."""
    return _migrate(settings, "upgrade", revision)


@db.command()
@click.argument("revision", required=False)
@click.pass_obj
def downgrade(settings: Settings, revision: str | None) -> int:
    """Migrate down to REVISION (default: base)."""
    return _migrate(settings, "downgrade", revision)


@db.command()
@click.argument("revision", required=False)
@click.pass_obj
def current(settings: Settings, revision: str | None) -> int:
    """Print the database's current revision."""
    return _migrate(settings, "current", revision)


def worker_argv(pool: str, settings: Settings) -> list[str]:
    """The ``celery worker`` command line of one pool (an argument list, no shell)."""
    if pool == "gpu":
        kind, concurrency = settings.gpu_pool, settings.gpu_concurrency
    else:
        kind, concurrency = "prefork", settings.worker_concurrency
    return [
        sys.executable, "-m", "celery", "-A", "pipeline", "worker",
        "-Q", ",".join(POOLS[pool]), "-P", kind, "-c", str(concurrency),
        "-n", f"{pool}@%h", "--loglevel", "INFO", "-E",
    ]


@click.command(cls=Command)
@click.option("--pool", type=click.Choice(("all", *POOLS)), default="all", show_default=True)
@click.pass_obj
def worker(settings: Settings, pool: str) -> int:
    """Run Celery workers for a pool. One pool: exec'd in place (its supervisor is systemd
    or Kubernetes); all: children restarted when they die."""
    from pipeline.supervise import Supervisor

    if pool != "all":
        argv = worker_argv(pool, settings)
        os.execv(argv[0], argv)
    supervisor = Supervisor({name: worker_argv(name, settings) for name in POOLS})
    supervisor.install()
    return supervisor.run()


@click.command(cls=Command)
@click.pass_obj
def flower(settings: Settings) -> int:
    """Flower with basic auth and persistent state (credentials passed by environment)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "celery", "-A", "pipeline", "flower",
        f"--address={settings.host}", f"--port={settings.flower_port}",
        "--persistent=True", f"--db={settings.state_dir / 'flower.db'}",
        "--state_save_interval=60000", "--max_tasks=100000",
    ]
    # Credentials travel in the environment, never on the command line (ps shows argv).
    env = dict(os.environ)
    env["FLOWER_BASIC_AUTH"] = (
        f"{settings.flower_user}:{settings.flower_password.get_secret_value()}"
    )
    os.execvpe(argv[0], argv, env)
    return 0  # pragma: no cover - exec does not return


@click.command(cls=Command)
def bridge() -> int:
    """The Kafka -> Celery bridge: execs ``python -m bridge`` in place (the settings travel
    in the same environment)."""
    argv = [sys.executable, "-m", "bridge"]
    os.execv(argv[0], argv)
    return 0  # pragma: no cover - exec does not return


@click.command(cls=Command)
@click.option("--host", help="address to bind (default SONIC_API_HOST)")
@click.option("--port", type=click.IntRange(1, 65535), help="port (default SONIC_API_PORT)")
@click.pass_obj
def serve(settings: Settings, host: str | None, port: int | None) -> int:
    """The HTTP service (jobs API, live status, web page)."""
    from pipeline.http.serve import run

    run(host or settings.api_host, port or settings.api_port)
    return 0


@click.group(cls=Group)
def topics() -> None:
    """Kafka topics."""


@topics.command()
@json_option
@click.pass_obj
def create(settings: Settings, as_json: bool) -> int:
    """Create the pipeline's topics that are missing (tasks, DLQ, control, status)."""
    from pipeline.console import topics as topic_table
    from pipeline.console.output import console, emit_json, table
    from pipeline.console.services import reaching_kafka

    with reaching_kafka(settings):
        outcomes = topic_table.create(settings)
    if as_json:
        emit_json(outcomes)
        return 0
    out = table("topic", "partitions", "outcome")
    for item in outcomes:
        out.add_row(item["topic"], str(item["partitions"]), item["outcome"])
    console().print(out)
    return 0


@click.command(cls=Command)
@click.option("--older-than", type=click.FloatRange(min=0), metavar="S",
              help="seconds untouched (default SONIC_WORKDIR_RETENTION_S)")
@click.option("--dry-run", is_flag=True, help="list, remove nothing")
@click.pass_obj
def housekeeping(settings: Settings, older_than: float | None, dry_run: bool) -> int:
    """Remove the work dirs of finished jobs; prints ``{"removed": [...], "dry_run"}``."""
    from pipeline.console.services import reaching_postgres
    from pipeline.housekeeping import sweep_workdirs
    from pipeline.state.db import make_db_engine

    db_engine = make_db_engine(settings)
    try:
        with reaching_postgres(settings):
            removed = sweep_workdirs(settings, db_engine, older_than, dry_run=dry_run)
    finally:
        db_engine.dispose()
    print(json.dumps({"removed": [str(p) for p in removed], "dry_run": dry_run}))
    return 0


#: ``render``'s knobs: flag -> the job message's ``config`` field (same names, same checks).
RENDER_KNOBS = ("min_resolution", "inference_steps", "dynamic_scale", "motion_scale",
                "expand_ratio", "seed")


def _json_value(text: str | None) -> object:
    """A knob as the job message would carry it: a JSON number when it reads as one, else the
    text (so ``--seed x`` or ``--inference-steps 2.5`` get the message's own codes)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _render_options(func: click.decorators.FC) -> click.decorators.FC:
    for knob in reversed(RENDER_KNOBS):
        func = click.option("--" + knob.replace("_", "-"), knob, metavar="N")(func)
    return func


@click.command(cls=Command)
@click.option("--image", required=True, help="portrait: a local file, or a URL")
@click.option("--audio", required=True, help="speech: a local file, or a URL")
@click.option("-o", "--output", required=True, help="the MP4 to write")
@click.option("--engine", help="engine name (default SONIC_DEFAULT_ENGINE)")
@_render_options
@click.option("--work-dir", help="where the stages work (default: a temporary dir)")
@click.pass_obj
def render(settings: Settings, image: str, audio: str, output: str, engine: str | None,
           work_dir: str | None, **knobs: str | None) -> int:
    """Render one job in this process: no Kafka, Redis or PostgreSQL; a progress bar on a
    terminal; prints a JSON summary."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.console.output import console
    from pipeline.stages.local import render_local

    out = Path(output).expanduser().absolute()
    if out.is_dir() or output.endswith(("/", os.sep)):
        raise click.BadParameter(f"{output} is a directory: give the MP4 file to write "
                                 f"(e.g. {out / 'video.mp4'})", param_hint="'-o' / '--output'")
    if not out.parent.is_dir():
        raise click.BadParameter(f"{out.parent} does not exist: create it first",
                                 param_hint="'-o' / '--output'")
    config = {knob: _json_value(knobs[knob]) for knob in RENDER_KNOBS}
    err = console(stderr=True)
    bar = Progress(TextColumn("{task.description:<12}"), BarColumn(),
                   TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                   console=err, transient=True, disable=not err.is_terminal)
    job = bar.add_task("preprocess", total=100)
    with bar:
        summary = render_local(
            settings, image, audio, out,
            config=config, engine=engine,
            work_dir=Path(work_dir) if work_dir else None,
            on_progress=lambda stage, percent: bar.update(job, description=stage,
                                                          completed=percent),
            on_event=lambda name, detail: err.print(f"{name}: {json.dumps(detail)}",
                                                    markup=False))
    print(json.dumps(summary))
    return 0


@click.command(cls=Command)
@click.option("--enable", metavar="KEY_ID", help="re-enable a disabled key")
@click.pass_obj
def credentials(settings: Settings, enable: str | None) -> int:
    """The remote engine's key pool as JSON: each key's id (never the key), state (ready,
    cooling, disabled), cool-down left, calls in flight and counts."""
    from pipeline.console.services import reaching_redis
    from pipeline.engines.credentials import pool_for

    with reaching_redis(settings):
        pool = pool_for(settings)
        if enable:
            pool.enable(enable)
        print(json.dumps(pool.snapshot(), indent=2))
    return 0


#: Every verb of this module, for :mod:`pipeline.cli`.
VERBS = (print_settings, db, worker, flower, bridge, serve, topics, housekeeping, render,
         credentials)

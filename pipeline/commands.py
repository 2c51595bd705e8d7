"""The CLI's verbs. Each takes the parsed arguments and the settings, returns an exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid

from pipeline.celery_config import POOLS
from pipeline.errors import PipelineError
from pipeline.settings import Settings


def print_settings(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(settings.redacted(), indent=2, default=str))
    return 0


def db(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.state import migrate
    from pipeline.state.health import explain_db_error

    action = {"upgrade": migrate.upgrade, "downgrade": migrate.downgrade}
    try:
        if args.action == "current":
            migrate.current(settings)
        else:
            default = "head" if args.action == "upgrade" else "base"
            action[args.action](settings, args.revision or default)
    except Exception as exc:  # noqa: BLE001 - turned into one actionable line
        raise explain_db_error(exc, settings) from exc
    return 0


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


def worker(args: argparse.Namespace, settings: Settings) -> int:
    """Run the pools' Celery workers. One pool: exec'd in place (its supervisor is systemd
    or Kubernetes). ``all``: children restarted when they die (:mod:`pipeline.supervise`)."""
    from pipeline.supervise import Supervisor

    if args.pool != "all":
        argv = worker_argv(args.pool, settings)
        os.execv(argv[0], argv)
    supervisor = Supervisor({pool: worker_argv(pool, settings) for pool in POOLS})
    supervisor.install()
    return supervisor.run()


def flower(args: argparse.Namespace, settings: Settings) -> int:
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


def bridge(args: argparse.Namespace, settings: Settings) -> int:
    """Exec ``python -m bridge`` in place (the bridge is an entry point of its own; the
    settings travel in the same environment)."""
    argv = [sys.executable, "-m", "bridge"]
    os.execv(argv[0], argv)
    return 0  # pragma: no cover - exec does not return


def submit(args: argparse.Namespace, settings: Settings) -> int:
    from kafka import KafkaProducer

    task_id = args.task_id or uuid.uuid4().hex
    message = {
        "task_id": task_id,
        "audio_url": args.audio,
        "image_url": args.image,
        "config": {"min_resolution": args.min_resolution,
                   "inference_steps": args.inference_steps},
    }
    if args.callback_url:
        message["callback_url"] = args.callback_url
    if args.engine:
        message["engine"] = args.engine
    producer = KafkaProducer(acks="all", **settings.kafka_client_config())
    try:
        meta = producer.send(settings.topic_tasks, key=task_id.encode(),
                             value=json.dumps(message).encode()).get(timeout=30)
    finally:
        producer.close(timeout=10)
    print(json.dumps({"task_id": task_id, "partition": meta.partition, "offset": meta.offset}))
    return 0


def show(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.state.queries import task_with_events

    found = task_with_events(settings, args.task_id)
    if found is None:
        raise PipelineError(f"no task {args.task_id!r} in the tasks table",
                            code="task.not_found")
    print(json.dumps(found, indent=2, default=str))
    return 0


def cancel(args: argparse.Namespace, settings: Settings) -> int:
    """Cancel jobs (:mod:`pipeline.scheduler.cancel`); prints ``{task_id: outcome}``.
    Exit 0 when every id was cancelled or already final, 1 when one is unknown."""
    from sqlalchemy.exc import SQLAlchemyError

    from pipeline.scheduler.cancel import cancel as cancel_jobs
    from pipeline.state.db import make_db_engine
    from pipeline.state.health import explain_db_error

    db_engine = make_db_engine(settings)
    try:
        outcomes = cancel_jobs(db_engine, args.task_ids, args.reason)
    except SQLAlchemyError as exc:  # turned into one actionable line (exit 3 or 4)
        raise explain_db_error(exc, settings) from exc
    finally:
        db_engine.dispose()
    print(json.dumps(outcomes, indent=2))
    return 1 if "unknown" in outcomes.values() else 0


def housekeeping(args: argparse.Namespace, settings: Settings) -> int:
    """One sweep of the work dir; prints ``{"removed": [...], "dry_run": bool}``."""
    from sqlalchemy.exc import SQLAlchemyError

    from pipeline.housekeeping import sweep_workdirs
    from pipeline.state.db import make_db_engine
    from pipeline.state.health import explain_db_error

    db_engine = make_db_engine(settings)
    try:
        removed = sweep_workdirs(settings, db_engine, args.older_than, dry_run=args.dry_run)
    except SQLAlchemyError as exc:  # turned into one actionable line (exit 3 or 4)
        raise explain_db_error(exc, settings) from exc
    finally:
        db_engine.dispose()
    print(json.dumps({"removed": [str(p) for p in removed], "dry_run": args.dry_run}))
    return 0


#: ``render``'s knobs: flag -> the job message's ``config`` field (same names, same checks).
RENDER_KNOBS = ("min_resolution", "inference_steps", "dynamic_scale", "motion_scale",
                "expand_ratio", "seed")


def _json_value(text: str) -> object:
    """A knob as the job message would carry it: a JSON number when it reads as one, else the
    text (so ``--seed x`` or ``--inference-steps 2.5`` get the message's own codes)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", required=True, help="portrait: a local file, or a URL")
    parser.add_argument("--audio", required=True, help="speech: a local file, or a URL")
    parser.add_argument("-o", "--output", required=True, help="the MP4 to write")
    parser.add_argument("--engine", help="engine name (default SONIC_DEFAULT_ENGINE)")
    for knob in RENDER_KNOBS:
        parser.add_argument("--" + knob.replace("_", "-"), type=_json_value, metavar="N")
    parser.add_argument("--work-dir", help="where the stages work (default: a temporary dir)")


def render(args: argparse.Namespace, settings: Settings) -> int:
    """One job through preprocess, gpu and encode in this process (no Kafka, Redis or
    PostgreSQL); a progress bar on a terminal; prints a JSON summary."""
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.stages.local import render_local

    config = {knob: getattr(args, knob) for knob in RENDER_KNOBS}
    console = Console(stderr=True)
    bar = Progress(TextColumn("{task.description:<12}"), BarColumn(),
                   TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                   console=console, transient=True, disable=not console.is_terminal)
    job = bar.add_task("preprocess", total=100)
    with bar:
        summary = render_local(
            settings, args.image, args.audio, Path(args.output).expanduser().absolute(),
            config=config, engine=args.engine,
            work_dir=Path(args.work_dir) if args.work_dir else None,
            on_progress=lambda stage, percent: bar.update(job, description=stage,
                                                          completed=percent),
            on_event=lambda name, detail: console.print(f"{name}: {json.dumps(detail)}"))
    print(json.dumps(summary))
    return 0


def credentials(args: argparse.Namespace, settings: Settings) -> int:
    """The remote engine's key pool as JSON: each key's id (never the key), state (ready,
    cooling, disabled), cool-down left, calls in flight and counts; ``--enable`` re-enables."""
    from pipeline.engines.credentials import pool_for

    pool = pool_for(settings)
    if args.enable:
        pool.enable(args.enable)
    print(json.dumps(pool.snapshot(), indent=2))
    return 0

"""The local stack: Kafka (KRaft), Redis and PostgreSQL on loopback, data under the state dir.

    .venv/bin/python ops/stack.py up|down|status|topics|install [--only kafka,redis,postgres]

``up`` installs what is missing, starts what is not running, waits until each service
answers, then creates the database role and the Kafka topics; run twice, the second run
changes nothing. ``down`` stops each service by the PID in its pidfile (SIGKILL after a
timeout). ``status`` prints one line per service and exits 1 if one is not running.
Errors are one line naming the service and the fix, with exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run from anywhere: import from the repo root, never from ops/ (ops/kafka is not kafka).
sys.path[0] = str(ROOT)

from ops.services import SERVICES, Service, StackError  # noqa: E402
from ops.services.install import NEEDS, apt_install, fetch_kafka_jars, missing_packages  # noqa: E402
from ops.services.proc import locked, run_command  # noqa: E402
from ops.services.topics import ensure_topics  # noqa: E402


def say(line: str) -> None:
    print(line, flush=True)


def install(settings, services: list[Service], everything: bool) -> None:
    started = time.monotonic()
    names = None if everything else [pkg for svc in services for pkg in NEEDS[svc.name]]
    missing = missing_packages(names)
    apt_install(missing)
    fetched = False
    for svc in services:
        if svc.name == "kafka":
            fetched = fetch_kafka_jars(settings.kafka_version, svc.libs)
    done = [f"apt-get installed {' '.join(missing)}"] if missing else []
    done += [f"fetched Kafka {settings.kafka_version} jars"] if fetched else []
    say(f"install: {', '.join(done) or 'nothing to do'} ({time.monotonic() - started:.1f}s)")


def up(settings, services: list[Service]) -> None:
    begin = time.monotonic()
    # The whole stack also installs the media tools the workers need (ffmpeg, espeak-ng).
    install(settings, services, everything=len(services) == len(SERVICES))
    todo, running = [], {}
    for svc in services:
        pid = svc.pid()
        if pid is not None:
            say(f"{svc.name}: already running (pid {pid})")
            running[svc.name] = pid
        else:
            svc.check_ports()
            todo.append(svc)
    spawned = {}
    for svc in todo:
        started = time.monotonic()
        spawned[svc.name] = (svc.start(), started, time.monotonic() - started)
    # Quickest first, so each time printed is its own (Kafka boots meanwhile).
    for svc in reversed(services):
        if svc.name in spawned:
            proc, started, prep = spawned[svc.name]
            svc.wait_ready(proc)
            say(f"{svc.name}: started (pid {proc.pid}) in {time.monotonic() - started:.1f}s "
                f"(prepare {prep:.1f}s)")
        else:
            svc.wait_ready(None, running[svc.name])  # a previous up may have left it booting
        step = time.monotonic()
        note = svc.ensure()
        if note:
            say(f"{svc.name}: {note} ({time.monotonic() - step:.1f}s)")
    if any(svc.name == "kafka" for svc in services):
        topics(settings)
    verb = "started" if todo else "nothing to do, all already running"
    say(f"up: {verb} ({time.monotonic() - begin:.1f}s)")


def topics(settings) -> None:
    started = time.monotonic()
    notes = ensure_topics(settings)
    say(f"topics: ready{': ' + '; '.join(notes) if notes else ''} "
        f"({time.monotonic() - started:.1f}s)")


def down(services: list[Service]) -> None:
    for svc in reversed(services):
        started = time.monotonic()
        say(f"{svc.name}: {svc.stop()} ({time.monotonic() - started:.1f}s)")


def status(services: list[Service]) -> int:
    code = 0
    for svc in services:
        ok, line = svc.status()
        say(line)
        code = code or (0 if ok else 1)
    return code


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ops/stack.py", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "topics", "install"])
    parser.add_argument("--only", default=",".join(SERVICES),
                        help="comma-separated services (default: %(default)s)")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(SERVICES))
    if unknown:
        parser.error(f"unknown service {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
    return args


def load_settings():
    from pydantic import ValidationError

    from pipeline.settings import load

    try:
        return load()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "_".join(str(part) for part in first["loc"]).upper()
        raise StackError("settings", f"SONIC_{field}: {first['msg']}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    # A relative SONIC_STATE_DIR (default .state) means the repo's, wherever we run from.
    os.chdir(ROOT)
    return run_command(lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    settings = load_settings()
    services = [cls(settings) for name, cls in SERVICES.items() if name in args.only]
    if args.command == "status":
        return status(services)
    with locked(settings.state_dir, "stack"):
        if args.command == "up":
            up(settings, services)
        elif args.command == "down":
            down(services)
        elif args.command == "topics":
            topics(settings)
        else:
            install(settings, services, everything=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

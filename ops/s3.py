"""The local S3 server: MinIO on loopback, data under ``<state>/s3``, the bucket created.

    .venv/bin/python ops/s3.py up|down|status|install [--port N]

``install`` builds the pinned MinIO server with the Go toolchain into ``<state>/bin``
(about five minutes the first time; nothing to do once the binary is there). ``up``
installs if needed, starts MinIO unless it runs, waits until it answers, then creates
``SONIC_S3_BUCKET``; run twice, the second run changes nothing. ``down`` stops it by the
PID in its pidfile. ``status`` prints one line and exits 1 if it is not running. Errors
are one line naming the fix, exit status 1. Point the pipeline at it with
``SONIC_STORAGE_BACKEND=s3 SONIC_S3_ENDPOINT=http://127.0.0.1:<port>``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == ROOT / "ops":
    sys.path[0] = str(ROOT)  # run as a script: import from the repo root, never from ops/

from ops.services.base import Service  # noqa: E402
from ops.services.proc import StackError, locked, run_command  # noqa: E402
from pipeline.settings import Settings  # noqa: E402

#: The MinIO server module and the exact version built (a commit of its main branch).
MINIO_MODULE = "github.com/minio/minio"
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"
DEFAULT_PORT = 19000
#: Used when SONIC_S3_ACCESS_KEY / SONIC_S3_SECRET_KEY are unset (local stack only).
DEV_ACCESS_KEY = "sonicdev"
DEV_SECRET_KEY = "sonicdev-secret"


def credentials(settings: Settings) -> tuple[str, str]:
    access = settings.s3_access_key.get_secret_value() if settings.s3_access_key else DEV_ACCESS_KEY
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else DEV_SECRET_KEY
    return access, secret


def find_go() -> str:
    found = shutil.which("go") or next(
        (str(p) for p in (Path("/usr/local/go/bin/go"),) if p.is_file()), None)
    if found is None:
        raise StackError("s3", "go not found on PATH; install Go >= 1.24 to build MinIO, "
                         "or put a minio server binary on PATH")
    return found


def install_minio(bin_dir: Path) -> tuple[Path, bool]:
    """The MinIO binary (``bin_dir/minio`` or one on PATH), built if missing; True if built."""
    local = bin_dir / "minio"
    if local.is_file() and os.access(local, os.X_OK):
        return local, False
    on_path = shutil.which("minio")
    if on_path is not None:
        return Path(on_path), False
    bin_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(bin_dir), "GOFLAGS": "-buildvcs=false",
           "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    argv = [find_go(), "install", f"{MINIO_MODULE}@{MINIO_VERSION}"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    if result.returncode != 0 or not local.is_file():
        lines = [ln for ln in (result.stderr or result.stdout).splitlines() if ln.strip()]
        raise StackError("s3", f"go install {MINIO_MODULE}@{MINIO_VERSION} failed "
                         f"(exit {result.returncode}): {(lines or ['(no output)'])[-1][:300]}")
    return local, True


class MinIO(Service):
    name = "s3"
    marker = "minio"
    start_timeout = 30.0

    def __init__(self, settings: Settings, port: int | None = None,
                 bin_dir: Path | None = None) -> None:
        super().__init__(settings)
        self.port = port or int(getattr(settings, "s3_port", DEFAULT_PORT))
        self.bin_dir = bin_dir or settings.state_dir / "bin"
        self.data = self.home / "data"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ports(self) -> list[tuple[int, str]]:
        return [(self.port, "SONIC_S3_PORT")]

    def command(self) -> list[str]:
        binary, _built = install_minio(self.bin_dir)
        self.data.mkdir(parents=True, exist_ok=True)
        return [str(binary), "server", str(self.data), "--address", f"{self.host}:{self.port}",
                "--quiet"]

    def spawn_options(self) -> dict[str, object]:
        access, secret = credentials(self.settings)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
               "MINIO_ROOT_USER": access, "MINIO_ROOT_PASSWORD": secret,
               "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"}
        return {"env": env, "cwd": self.home}

    def probe(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/minio/health/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def store_settings(self) -> Settings:
        """The settings an S3Store needs to talk to this server."""
        from pydantic import SecretStr

        access, secret = credentials(self.settings)
        return self.settings.model_copy(update={
            "storage_backend": "s3", "s3_endpoint": self.endpoint,
            "s3_access_key": SecretStr(access), "s3_secret_key": SecretStr(secret)})

    def ensure(self) -> str | None:
        from pipeline.errors import PipelineError
        from pipeline.storage.s3 import S3Store

        try:
            created = S3Store(self.store_settings()).ensure_bucket()
        except PipelineError as exc:
            raise StackError(self.name, f"{exc.message}; check SONIC_S3_ACCESS_KEY / "
                             "SONIC_S3_SECRET_KEY against the running server") from None
        return f"bucket {self.settings.s3_bucket} created" if created else None


def say(line: str) -> None:
    print(line, flush=True)


def up(svc: MinIO) -> None:
    begin = time.monotonic()
    _binary, built = install_minio(svc.bin_dir)
    if built:
        say(f"s3: built MinIO {MINIO_VERSION} ({time.monotonic() - begin:.1f}s)")
    pid = svc.pid()
    if pid is not None:
        say(f"s3: already running (pid {pid}) at {svc.endpoint}")
    else:
        started = time.monotonic()
        proc = svc.start()
        svc.wait_ready(proc)
        say(f"s3: started (pid {proc.pid}) at {svc.endpoint} in {time.monotonic() - started:.1f}s")
    note = svc.ensure()
    say(f"s3: {note or f'bucket {svc.settings.s3_bucket} ready'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ops/s3.py", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "install"])
    parser.add_argument("--port", type=int, default=None,
                        help=f"listen port (default: SONIC_S3_PORT or {DEFAULT_PORT})")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return run_command(lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    from pipeline.settings import load

    svc = MinIO(load(), port=args.port)
    if args.command == "status":
        ok, line = svc.status()
        say(line)
        return 0 if ok else 1
    with locked(svc.state, "s3"):
        if args.command == "up":
            up(svc)
        elif args.command == "down":
            say(f"s3: {svc.stop()}")
        else:
            started = time.monotonic()
            binary, built = install_minio(svc.bin_dir)
            say(f"s3: {'built' if built else 'already installed'} {binary} "
                f"({time.monotonic() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Process plumbing shared by the local services: pidfiles, ports, logs, start, stop.

Every service we start is a direct child of ``ops/stack.py`` in a session of its own
(so a Ctrl-C in the terminal does not reach it); its PID goes to ``<state>/run/<name>.pid``
and it is stopped by that PID only, never by name.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class StackError(Exception):
    """One line for the operator: ``<service>: <what is wrong>; <the fix>``."""

    def __init__(self, service: str, message: str, log: Path | None = None) -> None:
        super().__init__(f"{service}: {message}")
        #: The log whose last lines are worth showing under the message, if any.
        self.log = log


def pid_alive(pid: int, marker: str = "") -> bool:
    """True if ``pid`` runs, is not a zombie, and its command line contains ``marker``.

    The marker guards against a stale pidfile whose PID was reused by another program.
    """
    proc = Path(f"/proc/{pid}")
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    # Orphans are not always reaped here (PID 1 may not be an init): a zombie is dead.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and marker in cmdline


def read_pid(pidfile: Path, marker: str) -> int | None:
    """The live PID recorded in ``pidfile``; a stale file is removed."""
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if pid_alive(pid, marker):
        return pid
    pidfile.unlink(missing_ok=True)
    return None


def port_in_use(host: str, port: int) -> bool:
    """True if something listens on (host, port). SO_REUSEADDR ignores TIME_WAIT leftovers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def last_line(path: Path) -> str:
    """The last non-empty line of a log file (or a note that it is empty)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            lines = [ln.strip() for ln in fh.read().decode(errors="replace").splitlines()]
    except FileNotFoundError:
        return "(no log yet)"
    lines = [ln for ln in lines if ln and not ln.startswith("=== ")]
    return lines[-1] if lines else "(log is empty)"


def tail(path: Path, count: int = 15) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-count:]
    except FileNotFoundError:
        return []


def spawn(
    argv: list[str],
    *,
    log: Path,
    pidfile: Path,
    cwd: Path | None = None,
    user: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session, output appended to ``log``; record its PID."""
    log.parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"=== started {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            **as_user(user),
        )
    pidfile.write_text(f"{proc.pid}\n")
    return proc


def as_user(user: str | None) -> dict[str, object]:
    """Popen keyword arguments that drop root to ``user`` (uid, gid and groups)."""
    if user is None:
        return {}
    import pwd

    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def stop(pid: int, marker: str, sig: int, timeout: float) -> bool:
    """Send ``sig`` and wait for the exit; SIGKILL after ``timeout``. True if killed."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    if wait_gone(pid, marker, timeout):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    wait_gone(pid, marker, 10.0)
    return True


def wait_gone(pid: int, marker: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid, marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def report(exc: StackError) -> int:
    """Print a stack error (one line, then the log's last lines if any); exit status 1."""
    print(exc, file=sys.stderr, flush=True)
    if exc.log is not None:
        print("\n".join(f"    {line}" for line in tail(exc.log, 10)), file=sys.stderr)
    return 1


@contextmanager
def locked(state_dir: Path, name: str) -> Iterator[None]:
    """One up/down/install at a time per state dir: an flock on ``<state>/run/<name>.lock``."""
    run = state_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    with (run / f"{name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def run_command(command: Callable[[], int]) -> int:
    """``command()``'s exit status; a :class:`StackError` is reported (1), Ctrl-C is 130."""
    try:
        return command()
    except StackError as exc:
        return report(exc)
    except KeyboardInterrupt:
        return 130

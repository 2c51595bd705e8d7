"""What every local service provides, and the generic up/down/status steps over it."""

from __future__ import annotations

import signal
import subprocess
import time

from pipeline.settings import Settings

from .proc import StackError, last_line, pid_alive, port_answers, port_in_use, read_pid, spawn, stop


class Service:
    #: Name used in messages, pidfiles and logs.
    name = ""
    #: A string in the process's command line (guards against reused PIDs).
    marker = ""
    stop_signal: int = signal.SIGTERM
    #: Seconds to wait for a clean exit before SIGKILL.
    stop_timeout = 20.0
    #: Seconds to wait for the service to answer after it started.
    start_timeout = 30.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = settings.state_dir
        self.host = settings.host
        self.home = self.state / self.name
        self.log = self.state / "logs" / f"{self.name}.log"
        self.pidfile = self.state / "run" / f"{self.name}.pid"

    # --- per service -------------------------------------------------------------------
    def ports(self) -> list[tuple[int, str]]:
        """(port, the setting that moves it) for every port the service listens on."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Write configs and do one-time initialisation (initdb, storage format)."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def spawn_options(self) -> dict[str, object]:
        return {}

    def probe(self) -> bool:
        """True once the service answers; raise StackError for a definite failure."""
        raise NotImplementedError

    def ensure(self) -> str | None:
        """Idempotent set-up once it answers (roles, databases). Returns a note."""
        return None

    # --- generic ----------------------------------------------------------------------
    def pid(self) -> int | None:
        return read_pid(self.pidfile, self.marker)

    def check_ports(self) -> None:
        for port, setting in self.ports():
            try:
                taken = port_in_use(self.host, port)
            except OSError as exc:
                raise StackError(self.name, f"cannot listen on {self.host}: {exc.strerror}; "
                                 "set SONIC_HOST to an address of this machine") from None
            if taken:
                raise StackError(
                    self.name,
                    f"port {port} on {self.host} is in use by another process; "
                    f"stop it or set {setting}",
                )

    def start(self) -> subprocess.Popen[bytes]:
        self.check_ports()
        self.home.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.prepare()
        return spawn(self.command(), log=self.log, pidfile=self.pidfile, **self.spawn_options())

    def wait_ready(self, proc: subprocess.Popen[bytes] | None, pid: int | None = None) -> None:
        """Wait until it answers: ``proc`` just started here, or ``pid`` found running."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            died = proc.poll() is not None if proc is not None else not pid_alive(pid, self.marker)
            if died:
                self.pidfile.unlink(missing_ok=True)
                code = f" with code {proc.returncode}" if proc is not None else ""
                raise StackError(
                    self.name,
                    f"exited{code} while starting; see {self.log}: {last_line(self.log)}",
                    log=self.log,
                )
            if self.probe():
                return
            if time.monotonic() > deadline:
                raise StackError(
                    self.name,
                    f"not answering after {self.start_timeout:.0f}s; "
                    f"see {self.log}: {last_line(self.log)}",
                    log=self.log,
                )
            time.sleep(0.25)

    def stop(self) -> str:
        pid = self.pid()
        if pid is None:
            return "not running"
        killed = stop(pid, self.marker, self.stop_signal, self.stop_timeout)
        self.pidfile.unlink(missing_ok=True)
        return f"stopped (pid {pid}){' with SIGKILL' if killed else ''}"

    def status(self) -> tuple[bool, str]:
        pid = self.pid()
        ports = ",".join(f"{self.host}:{port}" for port, _ in self.ports())
        if pid is None:
            return False, f"{self.name:<9} stopped                {ports}"
        port = self.ports()[0][0]
        if not port_answers(self.host, port):
            return False, f"{self.name:<9} not answering  pid {pid:<7} {ports}"
        return True, f"{self.name:<9} running        pid {pid:<7} {ports}"

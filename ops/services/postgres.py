"""PostgreSQL, the record: a private cluster under the state dir, owned by ``postgres``.

PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres``
system user (created when missing) and the server runs as that user. The unix socket
lives in the state dir and trusts local connections (only its owner and root can reach
it); TCP on the loopback address requires the SCRAM password of ``SONIC_PG_USER``.
"""

from __future__ import annotations

import os
import pwd
import signal
import stat
import subprocess
from pathlib import Path

import psycopg2
from psycopg2 import sql

from .base import Service
from .proc import StackError, as_user

#: Unix socket paths longer than this are refused by the kernel (sun_path is 108 bytes).
MAX_SOCKET_PATH = 107


def bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin holding a server binary."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


class Postgres(Service):
    name = "postgres"
    marker = "postgres"
    # SIGINT is the "fast" shutdown: SIGTERM would wait for every client to disconnect.
    stop_signal = signal.SIGINT
    stop_timeout = 30.0
    start_timeout = 60.0

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.data = self.home / "data"
        self.sockets = self.home / "sock"
        self.user = "postgres" if os.geteuid() == 0 else None

    def ports(self) -> list[tuple[int, str]]:
        return [(self.settings.pg_port, "SONIC_PG_PORT")]

    def binary(self, name: str) -> str:
        found = bin_dir()
        if found is None:
            raise StackError(self.name, "PostgreSQL binaries not found; run `ops/stack.py install` as root")
        return str(found / name)

    def prepare(self) -> None:
        socket_path = self.sockets / f".s.PGSQL.{self.settings.pg_port}"
        if len(str(socket_path)) > MAX_SOCKET_PATH:
            raise StackError(self.name, f"socket path {socket_path} is too long; set a shorter SONIC_STATE_DIR")
        self.sockets.mkdir(mode=0o700, exist_ok=True)
        if self.user is not None:
            self._ensure_system_user()
            entry = pwd.getpwnam(self.user)
            self._check_reachable(entry)
            for path in (self.home, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._initdb()

    def _ensure_system_user(self) -> None:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                            "--home-dir", "/var/lib/postgresql", "postgres"], check=True)

    def _check_reachable(self, entry: pwd.struct_passwd) -> None:
        """The postgres user must be able to walk down to the state dir."""
        for parent in [*reversed(self.home.parents), self.home]:
            mode = parent.stat()
            ok = (mode.st_mode & stat.S_IXOTH
                  or (mode.st_uid == entry.pw_uid and mode.st_mode & stat.S_IXUSR)
                  or (mode.st_gid == entry.pw_gid and mode.st_mode & stat.S_IXGRP))
            if not ok:
                raise StackError(self.name, f"user postgres cannot enter {parent}; "
                                 f"run `chmod o+x {parent}` or set SONIC_STATE_DIR elsewhere")

    def _initdb(self) -> None:
        argv = [self.binary("initdb"), "-D", str(self.data), "-U", "postgres",
                "--auth-local=trust", "--auth-host=scram-sha-256",
                "--encoding=UTF8", "--locale=C.UTF-8"]
        result = subprocess.run(argv, cwd=self.home, capture_output=True, text=True, **as_user(self.user))
        with self.log.open("a") as log:
            log.write(result.stdout + result.stderr)
        if result.returncode != 0:
            lines = [ln for ln in result.stderr.splitlines() if ln.strip()] or ["(no output)"]
            raise StackError(self.name, f"initdb failed; see {self.log}: {lines[-1]}")

    def command(self) -> list[str]:
        return [self.binary("postgres"), "-D", str(self.data),
                "-c", f"listen_addresses={self.host}",
                "-c", f"port={self.settings.pg_port}",
                "-c", f"unix_socket_directories={self.sockets}",
                "-c", "max_connections=200"]

    def spawn_options(self) -> dict[str, object]:
        return {"cwd": self.home, "user": self.user}

    def superuser(self):
        return psycopg2.connect(host=str(self.sockets), port=self.settings.pg_port,
                                user="postgres", dbname="postgres", connect_timeout=3)

    def probe(self) -> bool:
        try:
            self.superuser().close()
            return True
        except psycopg2.OperationalError:
            return False

    def ensure(self) -> str | None:
        s = self.settings
        notes = []
        conn = self.superuser()
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (s.pg_user,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                        sql.Identifier(s.pg_user), sql.Literal(s.pg_password.get_secret_value())))
                    notes.append(f"role {s.pg_user} created")
                # The admins' read-only role (migration 0005 grants it SELECT; roles
                # belong to the cluster, and the pipeline's own role may not create them).
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'sonic_readonly'")
                if cur.fetchone() is None:
                    cur.execute("CREATE ROLE sonic_readonly NOLOGIN")
                    notes.append("role sonic_readonly created")
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (s.pg_database,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(s.pg_database), sql.Identifier(s.pg_user)))
                    notes.append(f"database {s.pg_database} created")
        finally:
            conn.close()
        self._check_login()
        return ", ".join(notes) or None

    def _check_login(self) -> None:
        """Log in over TCP exactly as the pipeline will."""
        s = self.settings
        try:
            psycopg2.connect(host=self.host, port=s.pg_port, user=s.pg_user, dbname=s.pg_database,
                             password=s.pg_password.get_secret_value(), connect_timeout=5).close()
        except psycopg2.OperationalError as exc:
            if "password authentication failed" in str(exc):
                raise StackError(self.name, f"role {s.pg_user} exists with a different password; "
                                 "set SONIC_PG_PASSWORD to its password") from None
            raise StackError(self.name, f"cannot log in as {s.pg_user} over TCP: "
                             f"{str(exc).strip().splitlines()[-1]}") from None

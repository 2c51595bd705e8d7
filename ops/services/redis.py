"""Redis, the Celery broker: a bounded window of in-flight tasks, never evicted."""

from __future__ import annotations

import os
import shutil

import redis

from .base import Service
from .proc import StackError


class Redis(Service):
    name = "redis"
    marker = "redis-server"
    start_timeout = 20.0

    def ports(self) -> list[tuple[int, str]]:
        return [(self.settings.redis_port, "SONIC_REDIS_PORT")]

    @property
    def conf(self):
        return self.home / "redis.conf"

    def prepare(self) -> None:
        s = self.settings
        lines = [
            f"bind {self.host}",
            f"port {s.redis_port}",
            "daemonize no",
            f"dir {self.home}",
            'logfile ""',
            f"maxmemory {s.redis_maxmemory}",
            # A full broker must refuse new tasks, never drop queued ones.
            "maxmemory-policy noeviction",
            # Queued chain messages survive a restart: an append-only file, fsynced every
            # second (at most a second of publishes can go; the reconciler re-sends those).
            'save ""',
            "appendonly yes",
            "appendfsync everysec",
            'appenddirname "appendonly"',
        ]
        if s.redis_password is not None:
            lines.append(f"requirepass {s.redis_password.get_secret_value()}")
        # The file may hold the password: only the owner reads it.
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError(self.name, "redis-server not found; run `ops/stack.py install` as root")
        return [binary, str(self.conf)]

    def client(self) -> redis.Redis:
        password = self.settings.redis_password
        return redis.Redis(
            host=self.host,
            port=self.settings.redis_port,
            password=password.get_secret_value() if password is not None else None,
            socket_timeout=2,
            socket_connect_timeout=2,
        )

    def probe(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.AuthenticationError:
            raise StackError(
                self.name,
                "the running server does not accept SONIC_REDIS_PASSWORD (wrong, missing or "
                "not expected); fix the setting, or run `ops/stack.py down --only redis` and "
                "`up` to apply it",
            ) from None
        except redis.RedisError:
            return False

    def ensure(self) -> str | None:
        # A server already running with another password is caught here...
        self.probe()
        if self.settings.redis_password is None:
            return None
        # ...and one running with none at all, which redis-py would quietly accept.
        try:
            with redis.Redis(host=self.host, port=self.settings.redis_port, socket_timeout=2) as bare:
                bare.ping()
        except redis.AuthenticationError:
            return None
        raise StackError(self.name, "the running server has no password but SONIC_REDIS_PASSWORD "
                         "is set; run `ops/stack.py down --only redis` and `up` to apply it")

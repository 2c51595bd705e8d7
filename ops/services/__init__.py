"""The local services of the dev stack, in start order (the slowest first)."""

from __future__ import annotations

from .base import Service
from .kafka import Kafka
from .postgres import Postgres
from .proc import StackError
from .redis import Redis

#: Start order; ``down`` goes the other way.
SERVICES: dict[str, type[Service]] = {"kafka": Kafka, "postgres": Postgres, "redis": Redis}

__all__ = ["SERVICES", "Service", "StackError"]

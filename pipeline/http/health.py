"""``GET /healthz``: PostgreSQL, Redis and Kafka, each asked at once, all within a bound.

    200 {"status": "ok", "checks": {"postgres": "ok", "redis": "ok", "kafka": "ok"}}
    503 {"status": "unavailable", "failing": ["kafka"], "checks": {..., "kafka": "why"},
         "error": {"code": "service.unavailable", "message": "kafka: why"}}
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, TimeoutError as Timeout
from typing import Any

import redis
from sqlalchemy import Engine, text

from .kafka import Kafka

#: Seconds the whole check may take; a service that has not answered by then is failing.
BOUND_S = 3.0


def _postgres(db_engine: Engine) -> str | None:
    with db_engine.connect() as conn:
        conn.execute(text("SET LOCAL statement_timeout = 2000"))
        conn.execute(text("SELECT 1 FROM tasks LIMIT 0"))
    return None


def _redis(client: redis.Redis) -> str | None:
    client.ping()
    return None


def check(db_engine: Engine, redis_client: redis.Redis, kafka: Kafka,
          pool: ThreadPoolExecutor) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of one health check."""
    probes: dict[str, Callable[[], str | None]] = {
        "postgres": lambda: _postgres(db_engine),
        "redis": lambda: _redis(redis_client),
        "kafka": kafka.healthy,
    }
    futures = {name: pool.submit(probe) for name, probe in probes.items()}
    checks: dict[str, str] = {}
    for name, future in futures.items():
        try:
            failure = future.result(timeout=BOUND_S)
        except Timeout:
            failure = f"no answer in {BOUND_S:g} s"
        except Exception as exc:  # noqa: BLE001 - any failure of a probe means "down"
            failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        checks[name] = failure[:200] if failure else "ok"
    failing = [name for name, state in checks.items() if state != "ok"]
    if not failing:
        return 200, {"status": "ok", "checks": checks}
    message = "; ".join(f"{name}: {checks[name]}" for name in failing)
    return 503, {"status": "unavailable", "failing": failing, "checks": checks,
                 "error": {"code": "service.unavailable", "message": message}}

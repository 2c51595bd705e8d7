"""Turn a failure to reach PostgreSQL into one line naming the service and the fix."""

from __future__ import annotations

from pipeline.errors import ConfigError, PipelineError, ServiceUnavailable
from pipeline.settings import Settings


def explain_db_error(exc: BaseException, settings: Settings) -> PipelineError:
    if isinstance(exc, PipelineError):
        return exc
    text = str(getattr(exc, "orig", None) or exc)
    where = f"{settings.pg_host}:{settings.pg_port}"
    if "password authentication failed" in text or "no password supplied" in text:
        return ConfigError(
            f"postgres: password authentication failed for user {settings.pg_user!r} at "
            f"{where}; check SONIC_PG_PASSWORD (and SONIC_PG_USER)"
        )
    if "does not exist" in text and "database" in text:
        return ConfigError(
            f"postgres: database {settings.pg_database!r} does not exist at {where}; "
            "run `make up` or set SONIC_PG_DATABASE"
        )
    if "Connection refused" in text or "could not connect" in text or "timeout" in text:
        return ServiceUnavailable(
            f"postgres: cannot connect to {where}; start it with `make up` or set "
            "SONIC_PG_HOST / SONIC_PG_PORT"
        )
    return ServiceUnavailable(f"postgres: {text.strip().splitlines()[0]}")

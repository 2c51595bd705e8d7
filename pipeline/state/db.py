"""Database engine (``db_engine``) and sessions, built from settings at an entry point."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine

from pipeline.settings import Settings


def make_db_engine(settings: Settings, **kwargs: object) -> Engine:
    """One pooled SQLAlchemy engine per process; ``pool_pre_ping`` survives Postgres restarts."""
    options: dict[str, object] = {
        "pool_size": settings.pg_pool_size,
        "pool_pre_ping": True,
        "connect_args": {"connect_timeout": 5, "application_name": "sonic-pipeline"},
        "hide_parameters": True,
    }
    options.update(kwargs)
    # ``pool_size=None`` drops the option (NullPool, used by migrations, takes none).
    options = {key: value for key, value in options.items() if value is not None}
    return create_engine(settings.database_url, **options)

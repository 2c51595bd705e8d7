"""Alembic environment: the URL comes from the settings object, never from alembic.ini."""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool

from pipeline.state.migrate import settings_from_config
from pipeline.state.db import make_db_engine
from pipeline.state.models import Base

config = context.config
target_metadata = Base.metadata


def run_offline() -> None:
    settings = settings_from_config(config)
    context.configure(url=settings.database_url, target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    settings = settings_from_config(config)
    db_engine = make_db_engine(settings, poolclass=pool.NullPool, pool_size=None)
    with db_engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()

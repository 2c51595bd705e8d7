"""Alembic on the real PostgreSQL: upgrade, downgrade, upgrade; models match the schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from pipeline.settings import Settings
from pipeline.state import migrate
from pipeline.state.db import make_db_engine
from pipeline.state.models import Base

pytestmark = pytest.mark.integration


@pytest.fixture
def scratch_db(stack: Settings, unique: str) -> Iterator[Settings]:
    """A throwaway database, so migrating down never touches the suite's own."""
    name = f"sonic_migr_{unique}"
    admin = make_db_engine(stack, isolation_level="AUTOCOMMIT", pool_size=1)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield stack.model_copy(update={"pg_database": name})
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _tables(settings: Settings) -> set[str]:
    db_engine = make_db_engine(settings, pool_size=1)
    try:
        return set(inspect(db_engine).get_table_names()) - {"alembic_version"}
    finally:
        db_engine.dispose()


def test_upgrade_downgrade_upgrade(scratch_db: Settings) -> None:
    migrate.upgrade(scratch_db)
    assert _tables(scratch_db) == set(Base.metadata.tables)
    migrate.downgrade(scratch_db, "base")
    assert _tables(scratch_db) == set()
    migrate.upgrade(scratch_db)
    assert _tables(scratch_db) == set(Base.metadata.tables)


def test_models_match_migrations(scratch_db: Settings) -> None:
    migrate.upgrade(scratch_db)
    db_engine = make_db_engine(scratch_db, pool_size=1)
    try:
        with db_engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        db_engine.dispose()
    assert diff == []


def test_status_check_constraint_rejects_unknown(db_engine, unique: str) -> None:
    with pytest.raises(Exception, match="tasks_status_valid"):
        with db_engine.begin() as conn:
            conn.execute(text("INSERT INTO tasks (task_id, status) VALUES (:t, 'bogus')"),
                         {"t": f"t-{unique}"})

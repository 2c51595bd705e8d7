"""Run the Alembic migrations in ``migrations/`` with the URL from settings."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from pipeline.settings import Settings, load

#: The Alembic environment shipped with the project.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(settings: Settings) -> Config:
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["settings"] = settings
    return config


def settings_from_config(config: Config) -> Settings:
    """The settings handed in by :func:`alembic_config`, or the environment's (plain CLI)."""
    settings = config.attributes.get("settings")
    return settings if isinstance(settings, Settings) else load()


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str = "base") -> None:
    command.downgrade(alembic_config(settings), revision)


def current(settings: Settings) -> None:
    command.current(alembic_config(settings), verbose=False)

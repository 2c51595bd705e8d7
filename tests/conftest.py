"""Shared fixtures. Integration tests talk to the real local stack (`make up`); when a
service is down they fail with the reason, they never skip."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from pipeline.settings import Settings, load
from pipeline.state.db import make_db_engine

#: The HTTP service's stack, one per session for tests/http and tests/browser alike.
pytest_plugins = ["tests.support.http_stack"]


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Settings:
    """The local stack must be up: `make test` starts it; a missing service is a failure."""
    kafka_host, kafka_port = settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)
    wanted = {
        "kafka": (kafka_host, int(kafka_port)),
        "redis": (settings.redis_host, settings.redis_port),
        "postgres": (settings.pg_host, settings.pg_port),
    }
    down = [f"{name} ({h}:{p})" for name, (h, p) in wanted.items() if not _reachable(h, p)]
    if down:
        pytest.fail(f"services not reachable: {', '.join(down)}; run `make up`", pytrace=False)
    return settings


@pytest.fixture(scope="session")
def db_engine(stack: Settings) -> Iterator[Engine]:
    from pipeline.state import migrate

    migrate.upgrade(stack)
    db_engine = make_db_engine(stack)
    yield db_engine
    db_engine.dispose()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topics, queues, task ids and databases."""
    return uuid.uuid4().hex[:10]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``chaos`` tests (long versions of suite scenarios) run only when the marker
    expression asks for them (``make chaos``: ``-m chaos``); other runs deselect them."""
    if "chaos" in (config.getoption("markexpr") or ""):
        return
    chaos = [item for item in items if item.get_closest_marker("chaos")]
    if chaos:
        config.hook.pytest_deselected(items=chaos)
        items[:] = [item for item in items if not item.get_closest_marker("chaos")]

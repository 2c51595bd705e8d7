"""One private chaos stack for the CI versions of the service, receiver and disk
scenarios (``tests/chaos/test_chaos_{services,receivers,disk}.py``): started once per
session, each scenario leaves it running with every service and process up.

Callbacks are short here so a faulty receiver costs seconds: an attempt's deadline
``WEBHOOK_TIMEOUT_S``, a receiver's breaker opens after ``BREAKER_FAILURES`` failures for
``BREAKER_OPEN_S``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.harness import ChaosStack

WEBHOOK_TIMEOUT_S = 2.0
BREAKER_FAILURES = 3
BREAKER_OPEN_S = 2.0
#: Settings of the stack these scenarios share (the runner's stacks take them too).
OVERRIDES = {"webhook_timeout_s": WEBHOOK_TIMEOUT_S,
             "webhook_breaker_failures": BREAKER_FAILURES,
             "webhook_breaker_open_s": BREAKER_OPEN_S}


@pytest.fixture(scope="session")
def service_stack() -> Iterator[ChaosStack]:
    """The shared private stack (see the module docstring); restored between tests."""
    stack = ChaosStack(name="ci-services", seed=10, overrides=OVERRIDES).start()
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
def chaos(service_stack: ChaosStack) -> ChaosStack:
    """The shared stack with every service and process running."""
    service_stack.ensure_running()
    return service_stack

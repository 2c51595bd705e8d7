"""The settings of the private stack that the service, receiver and disk scenarios run on
(the runner's stacks and the CI module's alike), and that CI stack as a context manager.

Callbacks are short here so a faulty receiver costs seconds: an attempt's deadline
``WEBHOOK_TIMEOUT_S``, a receiver's breaker opens after ``BREAKER_FAILURES`` failures for
``BREAKER_OPEN_S``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests.chaos.harness import ChaosStack

WEBHOOK_TIMEOUT_S = 2.0
BREAKER_FAILURES = 3
BREAKER_OPEN_S = 2.0
OVERRIDES = {"webhook_timeout_s": WEBHOOK_TIMEOUT_S,
             "webhook_breaker_failures": BREAKER_FAILURES,
             "webhook_breaker_open_s": BREAKER_OPEN_S}


@contextmanager
def shared_stack(name: str = "ci-services", seed: int = 10) -> Iterator[ChaosStack]:
    """A started private stack with :data:`OVERRIDES`, closed at the end of the block."""
    stack = ChaosStack(name=name, seed=seed, overrides=OVERRIDES).start()
    try:
        yield stack
    finally:
        stack.close()

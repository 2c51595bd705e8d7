"""CI version of the callback receiver faults (:mod:`tests.chaos.scenarios_receivers`): a
receiver that hangs, one that trickles, one that answers 500, each for a few seconds, and
a healthy one beside them; every job delivered exactly once (one callback id), the healthy
receiver's at the first attempt."""

from __future__ import annotations

import pytest

from tests.chaos import services_stack
from tests.chaos.harness import ChaosStack
from tests.chaos.scenarios_receivers import CI_JOBS, MODES, receivers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: The session's shared private stack (fixtures of tests.chaos.services_stack).
service_stack = services_stack.service_stack
chaos = services_stack.chaos


def test_faulty_receivers_get_each_callback_once_and_others_are_unaffected(
        chaos: ChaosStack) -> None:
    outcome = receivers(chaos, CI_JOBS)
    print(f"\n{outcome.row()}")
    assert outcome.passed, outcome.row()
    assert outcome.audit.completed == CI_JOBS
    for mode in MODES:  # each fault was met: its callbacks took more than one attempt
        assert outcome.figures[mode]["attempts_max"] > 1, outcome.figures
        assert outcome.figures[mode]["delivered_after_recovery_s"] is not None

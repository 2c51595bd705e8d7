"""CI versions of the service faults (:mod:`tests.chaos.scenarios_services`): Redis,
Kafka and PostgreSQL each restarted twice under a few jobs on a private stack; no job
lost or done twice, every process back by itself, every status event published."""

from __future__ import annotations

import pytest

from tests.chaos import services_stack
from tests.chaos.harness import ChaosStack
from tests.chaos.scenarios_services import SCENARIOS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: The session's shared private stack (fixtures of tests.chaos.services_stack).
service_stack = services_stack.service_stack
chaos = services_stack.chaos
#: Jobs per CI scenario (the runner's runs take many more).
JOBS = 5
#: Seconds within which the bridge admits again after Kafka answers.
ADMIT_AGAIN_S = 8.0


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_service_restarted_twice_every_job_ends_once(chaos: ChaosStack, name: str) -> None:
    outcome = SCENARIOS[name](chaos, JOBS)
    print(f"\n{outcome.row()}")
    assert outcome.passed, outcome.row()
    assert outcome.audit.completed == JOBS
    assert len(outcome.recovery_s) == 2
    if name.startswith("kafka"):
        # The bridge admits again within seconds of the broker answering (kafka-python's
        # default 30 s reconnect backoff once made it 10 to 35 s here).
        admitted = [p["admitted"] for p in outcome.figures["recovery_paths"]]
        assert max(admitted) < ADMIT_AGAIN_S, outcome.figures

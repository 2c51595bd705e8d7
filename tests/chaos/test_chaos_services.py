"""CI versions of the service, receiver and disk faults, on one private stack for the
module (a stack costs ~15 s to start; the faults leave it running with every service and
process up):

- Redis, Kafka and PostgreSQL each restarted twice under a few jobs
  (:mod:`tests.chaos.scenarios_services`): no job lost or done twice, every process back
  by itself, every status event published, the bridge admitting again within seconds of
  Kafka answering;
- receivers that hang, trickle or answer 500 for a few seconds beside a healthy one
  (:mod:`tests.chaos.scenarios_receivers`): one callback id per job, the healthy
  receiver's at the first attempt;
- the work dir's tmpfs full for a few seconds, then freed (:mod:`tests.chaos.scenarios_disk`):
  completed or ``resource.disk_full`` only, nothing left in the work dir, unmounted.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.chaos import scenarios_disk, scenarios_receivers
from tests.chaos.harness import ChaosStack
from tests.chaos.scenarios_services import SCENARIOS
from tests.chaos.services_stack import shared_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Jobs per service scenario (the runner's long runs take 40).
JOBS = 5
#: Seconds within which the bridge admits again after Kafka answers (kafka-python's
#: default 30 s reconnect backoff once made it 10 to 35 s here).
ADMIT_AGAIN_S = 8.0


@pytest.fixture(scope="module")
def service_stack() -> Iterator[ChaosStack]:
    with shared_stack() as stack:
        yield stack


@pytest.fixture
def chaos(service_stack: ChaosStack) -> ChaosStack:
    """The module's stack with every service and process running."""
    service_stack.ensure_running()
    return service_stack


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_service_restarted_twice_every_job_ends_once(chaos: ChaosStack, name: str) -> None:
    outcome = SCENARIOS[name](chaos, JOBS)
    print(f"\n{outcome.row()}")
    assert outcome.passed, outcome.row()
    assert outcome.audit.completed == JOBS
    assert len(outcome.recovery_s) == 2
    if name.startswith("kafka"):
        admitted = [p["admitted"] for p in outcome.figures["recovery_paths"]]
        assert max(admitted) < ADMIT_AGAIN_S, outcome.figures


def test_faulty_receivers_get_each_callback_once_and_others_are_unaffected(
        chaos: ChaosStack) -> None:
    jobs = scenarios_receivers.CI_JOBS
    outcome = scenarios_receivers.receivers(chaos, jobs)
    print(f"\n{outcome.row()}")
    assert outcome.passed, outcome.row()
    assert outcome.audit.completed == jobs
    for mode in scenarios_receivers.MODES:  # each fault was met: more than one attempt
        assert outcome.figures[mode]["attempts_max"] > 1, outcome.figures
        assert outcome.figures[mode]["delivered_after_recovery_s"] is not None


def test_a_full_work_dir_then_freed_loses_nothing_and_leaves_nothing(chaos: ChaosStack
                                                                     ) -> None:
    outcome = scenarios_disk.disk_full(chaos, scenarios_disk.CI_JOBS)
    print(f"\n{outcome.row()}")
    mounts = subprocess.run(["findmnt", "-n", str(chaos.settings.work_dir)],
                            capture_output=True, text=True).stdout
    assert mounts == "", f"the tmpfs is still mounted: {mounts}"
    assert outcome.passed, outcome.row()
    # The full disk was met (a stage retried or failed on it), and only as disk_full.
    codes = outcome.figures["stage_errors"]
    assert codes and all(key.endswith("resource.disk_full") for key in codes), codes

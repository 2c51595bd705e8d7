"""CI versions of the process faults (:mod:`tests.chaos.scenarios_process`): a few jobs
each, on one private stack shared by the module; every scenario ends with the audit (no
job lost, none done twice, one video and one callback id per job, nothing started past its
deadline). ``make chaos`` runs the long versions (``python -m tests.chaos``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.harness import ChaosStack
from tests.chaos.scenario import execute
from tests.chaos.scenarios_process import SCENARIOS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 1


@pytest.fixture(scope="module")
def process_stack() -> Iterator[ChaosStack]:
    stack = ChaosStack(name="ci-process", seed=SEED).start()
    try:
        yield stack
    finally:
        stack.close()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_process_fault_loses_and_duplicates_nothing(process_stack: ChaosStack,
                                                    scenario) -> None:
    outcome = execute(process_stack, scenario, scenario.ci_jobs, SEED)
    print(f"\n{outcome.describe()}\nrecovered in {outcome.recover_s} s, "
          f"wall {outcome.wall_s:.1f} s")
    assert outcome.passed, outcome.describe()
    assert outcome.audit.final == outcome.jobs == scenario.ci_jobs
    assert outcome.faults > 0, "no fault was injected"

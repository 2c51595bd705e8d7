"""CI version of the full work dir (:mod:`tests.chaos.scenarios_disk`): a tmpfs over the
work dir fills up for a few seconds under a few jobs, then is freed; every job ends once,
completed or failed with ``resource.disk_full`` only, nothing left in the work dir."""

from __future__ import annotations

import subprocess

import pytest

from tests.chaos import services_stack
from tests.chaos.harness import ChaosStack
from tests.chaos.scenarios_disk import CI_JOBS, disk_full

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: The session's shared private stack (fixtures of tests.chaos.services_stack).
service_stack = services_stack.service_stack
chaos = services_stack.chaos


def test_a_full_work_dir_then_freed_loses_nothing_and_leaves_nothing(chaos: ChaosStack
                                                                     ) -> None:
    outcome = disk_full(chaos, CI_JOBS)
    print(f"\n{outcome.row()}")
    mounts = subprocess.run(["findmnt", "-n", str(chaos.settings.work_dir)],
                            capture_output=True, text=True).stdout
    assert mounts == "", f"the tmpfs is still mounted: {mounts}"
    assert outcome.passed, outcome.row()
    # The full disk was met (a stage retried or failed on it), and only as disk_full.
    codes = outcome.figures["stage_errors"]
    assert codes and all(key.endswith("resource.disk_full") for key in codes), codes

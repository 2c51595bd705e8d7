"""The Prometheus alert rules (ops/prometheus/alerts.yml) under ``promtool test rules``:
promtool is built by the project (ops/prometheus/promtool.py), every alert has a case
where it fires and one where it must not, and a rule that drifts from its tests fails."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ops.prometheus.promtool import RULES_DIR, install_promtool, run_rule_tests
from pipeline.settings import Settings

ALERTS = RULES_DIR / "alerts.yml"
TESTS = RULES_DIR / "alerts_test.yml"


@pytest.fixture(scope="module")
def promtool(settings: Settings) -> Path:
    return install_promtool(settings.state_dir / "bin")


def _rules() -> dict[str, dict]:
    return {rule["alert"]: rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]}


def test_the_rules_pass_check_and_their_unit_tests(promtool: Path) -> None:
    check, tests = run_rule_tests(promtool)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in check.stdout
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "SUCCESS" in tests.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = [case for test in yaml.safe_load(TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert set(_rules()) - fires == set()
    assert set(_rules()) - quiet == set()


def test_the_alerts_the_operators_asked_for_are_there() -> None:
    rules = _rules()
    # The seed article's lag alert, at its threshold.
    assert "sonic_kafka_consumer_lag" in rules["SonicConsumerLagHigh"]["expr"]
    assert "> 1000" in rules["SonicConsumerLagHigh"]["expr"]
    for name in ("SonicFailureRateHigh", "SonicStuckJobs", "SonicCallbackFailures",
                 "SonicNoGpuWorker", "SonicDLQGrowing", "SonicOldestJobOld"):
        assert name in rules
    assert all(rule["labels"]["severity"] in ("info", "warning", "critical")
               for rule in rules.values())


@pytest.mark.parametrize("old, new", [
    ("(sonic_kafka_consumer_lag) > 1000", "(sonic_kafka_consumer_lag) > 2000"),
    ('sum(sonic_worker_processes{pool="gpu"}) < 1', 'sum(sonic_worker_processes{pool="cpu"}) < 1'),
    ("> 0.2\n        for: 15m", "> 0.5\n        for: 15m"),
    ("max by (pool) (sonic_pool_oldest_waiting_seconds) > 3600",
     "max by (pool) (sonic_pool_oldest_waiting_seconds) > 7200"),
])
def test_a_rule_that_drifts_from_its_tests_fails_them(promtool: Path, tmp_path: Path,
                                                      old: str, new: str) -> None:
    text = ALERTS.read_text()
    assert old in text
    (tmp_path / "alerts.yml").write_text(text.replace(old, new, 1))
    shutil.copy(TESTS, tmp_path / "alerts_test.yml")
    result = subprocess.run([str(promtool), "test", "rules", "alerts_test.yml"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr

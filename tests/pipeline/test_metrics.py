"""Worker metrics (pipeline/metrics.py) in one process, on the default registry."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from pipeline import metrics


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_gpu_stage_seconds_count_as_gpu_busy_whatever_the_outcome() -> None:
    before = _value("sonic_gpu_busy_seconds_total", engine="eng-busy")
    for outcome, seconds in (("succeeded", 2.0), ("failed", 0.5), ("retrying", 1.0),
                             ("stopped", 0.25)):
        metrics.observe_stage("gpu", outcome, seconds, "eng-busy")
    metrics.observe_stage("encode", "succeeded", 9.0, "eng-busy")  # not the gpu
    assert _value("sonic_gpu_busy_seconds_total", engine="eng-busy") - before == 3.75
    assert _value("sonic_stage_duration_seconds_count", stage="gpu", engine="eng-busy",
                  outcome="failed") == 1


def test_callback_destinations_past_the_cap_share_one_series(monkeypatch) -> None:
    monkeypatch.setattr(metrics, "_hosts", set())
    monkeypatch.setattr(metrics, "MAX_HOSTS", 3)
    hosts = [f"https://h{i}.example:443" for i in range(6)]
    for host in hosts + hosts[:2]:
        metrics.observe_callback(host, "delivered", 0.1)
    assert [_value("sonic_callback_attempts_total", host=h, outcome="delivered")
            for h in hosts[:3]] == [2, 2, 1]
    assert _value("sonic_callback_attempts_total", host="https://h4.example:443",
                  outcome="delivered") == 0
    assert _value("sonic_callback_attempts_total", host="other", outcome="delivered") >= 3


@pytest.mark.parametrize("reason, n", [("expired", 2), ("stalled", 1), ("lost", 1)])
def test_takeovers_count_by_stage_and_reason(reason: str, n: int) -> None:
    before = _value("sonic_lease_takeovers_total", stage="upload", reason=reason)
    metrics.count_takeover("upload", reason, n)
    metrics.count_takeover("upload", reason, 0)
    assert _value("sonic_lease_takeovers_total", stage="upload", reason=reason) - before == n


def test_a_worker_child_shows_its_pools_series_at_zero() -> None:
    metrics.worker_started("io", ("upload", "callback", "default"), "eng-zero")
    assert REGISTRY.get_sample_value("sonic_stage_duration_seconds_count", {
        "stage": "callback", "engine": "eng-zero", "outcome": "retrying"}) == 0
    assert REGISTRY.get_sample_value("sonic_stage_duration_seconds_count", {
        "stage": "default", "engine": "eng-zero", "outcome": "retrying"}) is None
    assert _value("sonic_worker_processes", pool="io") >= 1

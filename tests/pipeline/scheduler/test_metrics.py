"""The scheduler's gauges on the real PostgreSQL: per-tenant backlog bounded to the top N
plus "__other__", per-priority backlog and the oldest runnable job, gpu seconds per tenant
from task_events, and the dispatch latency the dispatcher observes."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from pipeline.scheduler.dispatcher import Dispatcher
from pipeline.scheduler.metrics import OTHER, SchedulerGauges
from tests.pipeline.scheduler.conftest import Jobs

pytestmark = pytest.mark.integration


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def tenant_series(topic: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in REGISTRY.collect():
        if family.name == "sonic_scheduler_backlog_tenant_jobs":
            for s in family.samples:
                if s.labels["topic"] == topic:
                    out[(s.labels["status"], s.labels["tenant"])] = s.value
    return out


def refresh(gauges: SchedulerGauges, jobs: Jobs) -> None:
    with jobs.db.connect() as conn:
        gauges.refresh(conn)


def test_tenant_backlog_is_the_top_n_plus_other(jobs: Jobs) -> None:
    t = jobs.topic
    # 12 tenants: tenant k has k+1 runnable jobs; two of tenant 11 are waiting on an id.
    rows = [{"task_id": f"{t}-{k}-{i}", "tenant": f"ten{k:02d}"}
            for k in range(12) for i in range(k + 1)]
    rows += [{"task_id": f"{t}-w{i}", "tenant": "ten11", "depends_on": [f"{t}-never"]}
             for i in range(2)]
    rows += [{"task_id": f"{t}-none", "tenant": None}]
    jobs.admit(*rows)
    gauges = SchedulerGauges(t, top_tenants=3, scan_s=0.0)
    refresh(gauges, jobs)
    series = tenant_series(t)
    named = {tenant for _, tenant in series} - {OTHER}
    assert named == {"ten11", "ten10", "ten09"}
    assert series[("runnable", "ten11")] == 12 and series[("waiting", "ten11")] == 2
    assert series[("runnable", "ten09")] == 10
    # The other nine tenants (1+2+...+9 jobs) and the job without a tenant, summed.
    assert series[("runnable", OTHER)] == sum(range(1, 10)) + 1
    assert series[("waiting", OTHER)] == 0
    assert len(series) == 4 * 3  # 3 tenants + other, 3 statuses each

    # ten11's jobs end: it leaves the top and its series go; ten08 comes in.
    with jobs.db.begin() as conn:
        conn.execute(text("UPDATE tasks SET status = 'cancelled' WHERE tenant = 'ten11' "
                          "AND kafka_topic = :t"), {"t": t})
    refresh(gauges, jobs)
    series = tenant_series(t)
    assert {tenant for _, tenant in series} - {OTHER} == {"ten10", "ten09", "ten08"}
    assert ("runnable", "ten11") not in series


def test_priority_backlog_and_oldest_runnable(jobs: Jobs) -> None:
    t = jobs.topic
    jobs.admit({"task_id": f"{t}-old", "priority": 7},
               *({"task_id": f"{t}-p0-{i}", "priority": 0} for i in range(3)),
               {"task_id": f"{t}-w", "priority": 2, "depends_on": [f"{t}-never"]})
    with jobs.db.begin() as conn:
        conn.execute(text("UPDATE tasks SET received_at = now() - interval '90 seconds' "
                          "WHERE task_id = :t"), {"t": f"{t}-old"})
    gauges = SchedulerGauges(t, scan_s=0.0)
    refresh(gauges, jobs)
    name = "sonic_scheduler_backlog_priority_jobs"
    assert sample(name, topic=t, status="received", priority="0") == 3
    assert sample(name, topic=t, status="received", priority="7") == 1
    assert sample(name, topic=t, status="waiting", priority="2") == 1
    oldest = sample("sonic_scheduler_oldest_runnable_seconds", topic=t)
    assert oldest is not None and 89 <= oldest < 120
    # Nothing runnable: 0, and the priority series of the emptied levels go.
    with jobs.db.begin() as conn:
        conn.execute(text("UPDATE tasks SET status = 'cancelled' WHERE kafka_topic = :t"),
                     {"t": t})
    refresh(gauges, jobs)
    assert sample("sonic_scheduler_oldest_runnable_seconds", topic=t) == 0
    assert sample(name, topic=t, status="received", priority="0") is None


def test_gpu_seconds_per_tenant_from_finished_gpu_runs(jobs: Jobs) -> None:
    t = jobs.topic
    jobs.admit({"task_id": f"{t}-a1", "tenant": "a"}, {"task_id": f"{t}-a2", "tenant": "a"},
               {"task_id": f"{t}-b1", "tenant": "b"},
               *({"task_id": f"{t}-x{i}", "tenant": f"x{i}"} for i in range(12)))
    gauges = SchedulerGauges(t, top_tenants=2)  # at most 10 tenants get a series
    refresh(gauges, jobs)  # places the cursor: earlier events are not this process's

    def event(task: str, stage: str, event: str, seconds: float | None) -> None:
        with jobs.db.begin() as conn:
            conn.execute(text(
                "INSERT INTO task_events (task_id, stage, event, duration_s, at) "
                "VALUES (:t, :s, :e, :d, now() - interval '10 seconds')"),
                {"t": task, "s": stage, "e": event, "d": seconds})

    name = "sonic_tenant_gpu_seconds_total"
    event(f"{t}-a1", "gpu", "succeeded", 3.5)
    event(f"{t}-a2", "gpu", "cancelled", 1.25)
    event(f"{t}-a2", "gpu", "started", None)  # no duration: not a finished run
    event(f"{t}-b1", "gpu", "failed", 2.0)
    event(f"{t}-b1", "encode", "succeeded", 9.0)  # not the gpu
    refresh(gauges, jobs)
    assert sample(name, topic=t, tenant="a") == pytest.approx(4.75)
    assert sample(name, topic=t, tenant="b") == pytest.approx(2.0)
    refresh(gauges, jobs)  # read once: nothing counted twice
    assert sample(name, topic=t, tenant="a") == pytest.approx(4.75)
    # Twelve more tenants: eight fit under the cap of ten series, four go to __other__.
    for i in range(12):
        event(f"{t}-x{i}", "gpu", "succeeded", 1.0)
    refresh(gauges, jobs)
    own = [i for i in range(12) if sample(name, topic=t, tenant=f"x{i}") == 1.0]
    assert len(own) == 8
    assert sample(name, topic=t, tenant=OTHER) == pytest.approx(4.0)


def test_the_dispatcher_observes_admission_to_publish(jobs: Jobs) -> None:
    t = jobs.topic
    jobs.admit({"task_id": f"{t}-a"}, {"task_id": f"{t}-b"})
    with jobs.db.begin() as conn:
        conn.execute(text("UPDATE tasks SET received_at = now() - interval '7 seconds' "
                          "WHERE task_id = :t"), {"t": f"{t}-a"})
    sent: list = []
    dispatcher = Dispatcher(jobs.db, t, lambda *a: sent.append(a), window=5, tenant_cap=100,
                            dependency_wait_s=3600)
    assert dispatcher.once() == 2
    count = sample("sonic_dispatch_latency_seconds_count", topic=t)
    total = sample("sonic_dispatch_latency_seconds_sum", topic=t)
    assert count == 2 and 7.0 <= total < 9.0
    assert sample("sonic_dispatch_latency_seconds_bucket", topic=t, le="5.0") == 1

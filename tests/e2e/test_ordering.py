"""Per-key ordering on the whole path (Kafka -> bridges -> PostgreSQL -> dispatcher -> pools).

Three ordering keys x 8 jobs (x 20, the issue's figure, under ``make chaos``), interleaved:
two keys are Kafka keys (each on a partition of
its own, offset order), the third an explicit ``ordering_key`` whose jobs are spread over
every partition (admission order). A second bridge joins the group after the first third
has been produced, and the first leaves after the second third (two rebalances, and the
dispatcher moves from one bridge to the other). Per key: start order is admission order
and no two jobs overlap; across keys jobs do run at once; every job runs exactly once.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.e2e.scheduling import Flow, make_flow

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4


@pytest.mark.parametrize("jobs_per_key", [
    pytest.param(8, id="3x8"),
    # The figure: about four times as long, so `make chaos` runs it, not `make test`.
    pytest.param(20, id="3x20", marks=pytest.mark.chaos),
])
def test_jobs_of_a_key_run_one_at_a_time_in_admission_order_across_a_rebalance(
        sched, jobs_per_key: int) -> None:
    flow: Flow = make_flow(sched, partitions=PARTITIONS)
    try:
        _run(flow, jobs_per_key)
    finally:
        flow.close()


def _run(flow: Flow, jobs_per_key: int) -> None:
    p = flow.prefix
    # Given three keys: two Kafka keys pinned to partitions 0 and 1, one explicit
    # ordering_key whose jobs go round all partitions.
    keys = {f"{p}-a": 0, f"{p}-b": 1, f"{p}-c": None}
    records = []
    for i in range(jobs_per_key):
        for n, (key, partition) in enumerate(keys.items()):
            name = f"{key[-1]}{i:02d}"
            if partition is None:
                records.append(((i + n) % PARTITIONS, None,
                                flow.job(name, ordering_key=key)))
            else:
                records.append((partition, key, flow.job(name)))
    third = len(records) // 3
    thirds = [records[:third], records[third:2 * third], records[2 * third:]]

    # When the first bridge admits and dispatches the first third,
    first = flow.bridge()
    flow.produce(thirds[0])
    flow.wait(lambda: flow.count("completed") >= 3, 90, "the first jobs to complete")
    # a second bridge joins the group (a rebalance) while the second third arrives,
    second = flow.bridge()
    flow.produce(thirds[1])
    flow.wait(lambda: flow.count("completed") >= third // 2 + 3, 90,
              "jobs to complete with two bridges")
    # and the first leaves (another rebalance; its dispatcher hands over) before the last.
    assert flow.stop(first) == 0
    flow.produce(thirds[2])
    total = len(records)
    flow.wait(lambda: flow.count(*_FINAL) == total, 180, "every job to end")
    assert flow.stop(second) == 0

    rows = flow.rows()
    assert len(rows) == total
    assert {r["status"] for r in rows.values()} == {"completed"}, \
        {t: (r["status"], r["error_code"]) for t, r in rows.items() if r["status"] != "completed"}
    starts = flow.starts("preprocess")
    with flow.sched.db_engine.connect() as conn:
        runs = dict(conn.execute(text("""
            SELECT e.task_id, count(*) FROM task_events e JOIN tasks t USING (task_id)
            WHERE t.kafka_topic = :t AND e.stage = 'gpu' AND e.event = 'succeeded'
            GROUP BY 1"""), {"t": flow.topic}).all())
    assert runs == {t: 1 for t in rows}, "a job rendered twice or not at all"

    intervals: dict[str, list[tuple[int, object, object, str]]] = {}
    for task_id, row in rows.items():
        assert row["ordering_key"] in keys, row
        intervals.setdefault(row["ordering_key"], []).append(
            (row["seq"], starts[task_id], row["finished_at"], task_id))
    for key, jobs in intervals.items():
        jobs.sort()
        assert len(jobs) == jobs_per_key
        # Then, per key: a Kafka key is admitted in offset order ...
        if keys[key] is not None:
            offsets = [rows[t]["kafka_offset"] for *_, t in jobs]
            assert offsets == sorted(offsets), f"{key}: admitted out of offset order"
        # ... start order equals admission order, and each job starts after the one
        # before it ended.
        by_start = sorted(jobs, key=lambda j: j[1])
        assert [j[3] for j in by_start] == [j[3] for j in jobs], f"{key} started out of order"
        for before, after in zip(jobs, jobs[1:]):
            assert after[1] >= before[2], (
                f"{key}: {after[3]} started at {after[1]} before {before[3]} ended at "
                f"{before[2]}")
    # Across keys, jobs run at once: pairs of different keys whose intervals overlap.
    spans = [(start, end, key) for key, jobs in intervals.items() for _, start, end, _ in jobs]
    overlaps = sum(1 for i, (s1, e1, k1) in enumerate(spans) for s2, e2, k2 in spans[i + 1:]
                   if k1 != k2 and s1 < e2 and s2 < e1)
    assert overlaps >= jobs_per_key, f"keys held each other back: {overlaps} overlaps"
    print(f"\nordering: {total} jobs, {overlaps} cross-key overlaps")


_FINAL = ("completed", "failed", "rejected", "cancelled", "expired")

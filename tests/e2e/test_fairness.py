"""Tenant fairness end to end (Kafka -> bridge -> PostgreSQL -> dispatcher -> pools).

Tenant A submits 500 jobs; once the gpu is busy with them, tenant B submits 5. B's first job
is the next to start on the gpu (ahead of A's jobs already sent to Celery), and B's five
all finish while nearly all of A's backlog still waits. The finish times of both are
printed. Weights come from ``SONIC_TENANT_WEIGHTS`` (equal here).
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.scheduling import FINAL, Flow, hold_s, make_flow

pytestmark = [pytest.mark.integration, pytest.mark.slow]

A_JOBS, B_JOBS = 500, 5
#: gpu steps of A's jobs: long enough for B's first to be admitted, dispatched and
#: preprocessed while one of A's renders.
A_STEPS = 30
B_STEPS = 4


def test_a_burst_of_one_tenant_does_not_hold_back_another(sched) -> None:
    topic_flow = make_flow(sched, partitions=2, gpu_slots=1, dispatch_lead=3)
    a, b = f"{topic_flow.prefix}-A", f"{topic_flow.prefix}-B"
    topic_flow.settings["tenant_weights"] = f"{a}=1,{b}=1"
    try:
        _run(topic_flow, a, b)
    finally:
        topic_flow.close()



def _run(flow: Flow, a: str, b: str) -> None:
    # Given tenant A's 500 jobs, admitted and being served,
    flow.bridge()
    a_jobs = [flow.job(f"a{i:03d}", steps=A_STEPS, tenant=a) for i in range(A_JOBS)]
    flow.produce([(i % 2, None, m) for i, m in enumerate(a_jobs)])
    flow.wait(lambda: len(flow.rows()) == A_JOBS, 60, "A's jobs to be admitted")
    # when tenant B submits 5 jobs just as one of A's starts on the gpu,
    seen = len(flow.gpu_starts())
    starts = flow.wait(lambda: (lambda s: s if len(s) > seen else None)(flow.gpu_starts()),
                       60, "one of A's jobs to start on the gpu", 0.02)
    busy = starts[-1][1]
    b_jobs = [flow.job(f"b{i}", steps=B_STEPS, tenant=b) for i in range(B_JOBS)]
    produced = time.time()
    flow.produce([(i % 2, None, m) for i, m in enumerate(b_jobs)])
    b_ids = [m["task_id"] for m in b_jobs]

    def b_done() -> dict | None:
        rows = flow.rows()
        return rows if all(rows[t]["status"] in FINAL for t in b_ids if t in rows) \
            and all(t in rows for t in b_ids) else None

    rows = flow.wait(b_done, 120, "B's jobs to end", 0.2)
    starts = flow.gpu_starts()
    order = [t for _, t in starts]

    # then one of B's is the next job on the gpu after the one that was busy,
    nxt = order[order.index(busy) + 1]
    # all of B's jobs complete,
    assert {rows[t]["status"] for t in b_ids} == {"completed"}, \
        {t: (rows[t]["status"], rows[t]["error_code"]) for t in b_ids}
    # and B is done while nearly all of A's backlog still waits.
    a_rows = [r for r in rows.values() if r["tenant"] == a]
    a_done = sorted(r["finished_at"].timestamp() - produced for r in a_rows
                    if r["status"] == "completed")
    a_left = sum(1 for r in a_rows if r["status"] not in FINAL)
    b_done_s = sorted(rows[t]["finished_at"].timestamp() - produced for t in b_ids)
    per_a = hold_s(A_STEPS)
    b_first = min(s for s, t in starts if t in b_ids)
    short = len(flow.prefix) + 1
    print(f"\nfairness: next on the gpu after {busy[short:]}: {nxt[short:]}, "
          f"{b_first - produced:.2f} s after B submitted\n"
          f"  B finished (s after B submitted): {[round(x, 2) for x in b_done_s]}\n"
          f"  A finished by then: {len(a_done)} of {A_JOBS} "
          f"(s after B submitted: {[round(x, 2) for x in a_done if x > 0]}); "
          f"{a_left} left, about {a_left * per_a:.0f} s of gpu time (A drains after "
          f"~{a_left * per_a + b_done_s[-1]:.0f} s)")
    assert nxt in b_ids, f"{nxt} started on the gpu before any of B's"
    assert a_left >= A_JOBS - 5 * B_JOBS, f"A's backlog drained first: {a_left} left"
    assert b_done_s[-1] * 10 < a_left * per_a, "B's jobs finished late against A's backlog"

"""Priority end to end (Kafka -> bridge -> PostgreSQL -> dispatcher -> pools).

The gpu is busy with a low-priority job, the window ahead of it is full of them and more
than 50 wait in the backlog; a priority-0 job produced then must be the next job to start
on the gpu: ahead of the backlog (the dispatcher's pick) and ahead of the low jobs already
sent to Celery (Redis priorities at every stage). Ten trials in one run: each begins when
a low job has just started on the gpu.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from tests.e2e.scheduling import Flow, hold_s, make_flow

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRIALS = 10
#: Low jobs waiting in the backlog at every trial (the window holds a few more).
WAITING = 50
#: gpu steps of a low job: long enough for the urgent job to be admitted, dispatched and
#: preprocessed while one low job renders.
LOW_STEPS = 40
#: The window the production defaults give: one gpu slot, three jobs ahead of it.
WINDOW = {"gpu_slots": 1, "dispatch_lead": 3}


def test_an_urgent_job_is_the_next_to_start_on_a_busy_gpu(sched) -> None:
    flow: Flow = make_flow(sched, partitions=2, **WINDOW)
    try:
        _run(flow)
    finally:
        flow.close()


def _run(flow: Flow) -> None:
    low = [flow.job(f"low{i:03d}", steps=LOW_STEPS, priority=9)
           for i in range(WAITING + 3 * TRIALS)]
    flow.bridge()
    flow.produce([(i % 2, None, message) for i, message in enumerate(low)])
    low_ids = {m["task_id"] for m in low}

    trials: list[tuple[str, str, float]] = []  # (low job on the gpu, urgent id, produced at)
    seen = 0
    for trial in range(TRIALS):
        # Given a low job that has just started on the gpu, and 50 more waiting,
        starts = flow.wait(lambda: (lambda s: s if len(s) > seen and s[-1][1] in low_ids
                                    else None)(flow.gpu_starts()),
                           60, f"trial {trial}: a low job to start on the gpu", 0.02)
        busy = starts[-1][1]
        assert flow.count("received") >= WAITING, f"trial {trial}"
        # when an urgent job is produced,
        urgent = flow.job(f"urgent{trial}", steps=1, priority=0)
        produced = time.time()
        flow.produce([(trial % 2, None, urgent)])
        # then it is the next job to start on the gpu.
        flow.wait(lambda: any(t == urgent["task_id"] for _, t in flow.gpu_starts()),
                  60, f"trial {trial}: the urgent job to start on the gpu", 0.05)
        trials.append((busy, urgent["task_id"], produced))
        seen = [t for _, t in flow.gpu_starts()].index(urgent["task_id"]) + 1

    starts = flow.gpu_starts()
    order = [t for _, t in starts]
    at = {t: s for s, t in starts}
    with flow.sched.db_engine.connect() as conn:
        marks = {r[0]: r[1:] for r in conn.execute(text("""
            SELECT t.task_id, extract(epoch FROM t.received_at), extract(epoch FROM t.queued_at),
                   (SELECT extract(epoch FROM max(e.at)) FROM task_events e
                    WHERE e.task_id = t.task_id AND e.stage = 'preprocess'
                      AND e.event = 'succeeded')
            FROM tasks t WHERE t.kafka_topic = :t AND t.priority = 0"""), {"t": flow.topic})}
    lines, wrong = [], []
    for busy, urgent, produced in trials:
        nxt = order[order.index(busy) + 1]
        admitted, queued, prepared = (float(v) - produced for v in marks[urgent])
        lines.append(f"  {urgent[-7:]}: produced {produced - at[busy]:.2f} s into a "
                     f"{hold_s(LOW_STEPS):.1f} s render; admitted +{admitted:.2f} s, "
                     f"dispatched +{queued:.2f}, preprocessed +{prepared:.2f}, on the gpu "
                     f"+{at[urgent] - produced:.2f}; next on the gpu after the busy job: "
                     f"{nxt[-7:]}")
        if nxt != urgent:
            wrong.append(f"{urgent}: {nxt} started on the gpu first")
    print("\npriority trials:\n" + "\n".join(lines))
    assert not wrong, "\n".join(wrong)

"""``depends_on`` end to end (Kafka -> bridge -> PostgreSQL -> dispatcher -> pools): a diamond
runs in a valid order; a dependency that fails (for real: an undecodable image), is refused
at the door or expires fails its dependents with ``dependency.failed`` naming it, within a
second, whichever was admitted first; a cycle is rejected with ``dependency.cycle``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from tests.e2e.scheduling import FINAL, Flow, make_flow

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def flow(sched) -> Iterator[Flow]:
    flow = make_flow(sched, partitions=3)
    flow.bridge()
    try:
        yield flow
    finally:
        flow.close()


def _final(flow: Flow, ids: list[str], timeout_s: float = 90) -> dict[str, dict]:
    def done() -> dict[str, dict] | None:
        rows = flow.rows()
        return rows if all(rows.get(t, {}).get("status") in FINAL for t in ids) else None

    try:
        rows = flow.wait(done, timeout_s, "the jobs to end")
    except AssertionError:
        rows = flow.rows()
        open_ = {t: rows.get(t, {}).get("status") for t in ids
                 if rows.get(t, {}).get("status") not in FINAL}
        raise AssertionError(f"not final after {timeout_s} s: {open_}") from None
    return {t: rows[t] for t in ids}


def test_a_diamond_runs_in_a_valid_order(flow: Flow) -> None:
    # Given D on B and C, B and C on A, produced last first and on different partitions,
    a, b, c, d = (flow.job(n, steps=4) for n in ("dia-a", "dia-b", "dia-c", "dia-d"))
    ids = [m["task_id"] for m in (a, b, c, d)]
    b["depends_on"] = c["depends_on"] = [ids[0]]
    d["depends_on"] = [ids[1], ids[2]]
    flow.produce([(0, None, d), (1, None, c), (2, None, b)])
    flow.wait(lambda: flow.count("waiting") >= 3, 30, "the dependents to wait")
    flow.produce([(0, None, a)])
    # when they run,
    rows = _final(flow, ids)
    # each completes, and each starts only after everything it depends on completed.
    assert {t: r["status"] for t, r in rows.items()} == dict.fromkeys(ids, "completed")
    starts = flow.starts("preprocess")
    for task_id, row in rows.items():
        for dep in row["depends_on"] or []:
            assert starts[task_id] >= rows[dep]["finished_at"], (
                f"{task_id} started at {starts[task_id]} before {dep} ended at "
                f"{rows[dep]['finished_at']}")
    order = sorted(ids, key=starts.get)
    assert order[0] == ids[0] and order[-1] == ids[3], order
    print(f"\ndiamond start order: {[t[-5:] for t in order]}")


def test_a_failed_dependency_fails_its_dependents_within_a_second(flow: Flow) -> None:
    p = flow.prefix
    past = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    # Given three kinds of dependency that never complete: a job that fails on a real
    # error (an undecodable image), one refused at the door (priority out of range) and one
    # past its deadline before it starts,
    broken = flow.job("dep-broken", image_url=str(flow.sched.broken))
    refused = flow.job("dep-refused", priority=42)
    expired = flow.job("dep-expired", deadline=past)
    deps = [m["task_id"] for m in (broken, refused, expired)]
    # and dependents of each, admitted before it (waiting) or after it, plus a job that
    # depends on a dependent (the failure carries on down the graph),
    before = [flow.job(f"before-{i}", depends_on=[dep]) for i, dep in enumerate(deps)]
    chained = flow.job("chained", depends_on=[before[0]["task_id"]])
    flow.produce([(i % 3, None, m) for i, m in enumerate([*before, chained])])
    flow.wait(lambda: flow.count("waiting") >= 4, 30, "the dependents to wait")
    flow.produce([(i % 3, None, m) for i, m in enumerate((broken, refused, expired))])
    _final(flow, deps)
    after = [flow.job(f"after-{i}", depends_on=[dep]) for i, dep in enumerate(deps)]
    flow.produce([(i % 3, None, m) for i, m in enumerate(after)])
    dependents = [m["task_id"] for m in (*before, chained, *after)]
    # then every dependent fails with dependency.failed naming the job it waited for,
    rows = _final(flow, deps + dependents, 30)
    assert rows[deps[0]]["error_code"] == "image.undecodable", rows[deps[0]]
    assert rows[deps[1]]["status"] == "rejected", rows[deps[1]]
    assert rows[deps[2]]["status"] == "expired", rows[deps[2]]
    named = {**{m["task_id"]: dep for m, dep in zip(before, deps)},
             **{m["task_id"]: dep for m, dep in zip(after, deps)},
             chained["task_id"]: before[0]["task_id"]}
    lines = []
    for task_id, dep in named.items():
        row = rows[task_id]
        assert (row["status"], row["error_code"]) == ("failed", "dependency.failed"), row
        assert dep in row["error_message"], row["error_message"]
        # within a second of the dependency ending (or of its own admission, if later).
        since = max(rows[dep]["finished_at"], row["received_at"])
        lag = (row["finished_at"] - since).total_seconds()
        lines.append(f"  {task_id[len(p) + 1:]}: {lag:.3f} s after {dep[len(p) + 1:]} ended")
        # A row refused at the door is inserted final and fires no trigger: the
        # dispatcher's upkeep (every second) fails what already waited for it.
        assert lag <= (1.5 if dep == refused["task_id"] else 1.0), lines[-1]
        assert flow.starts("preprocess").get(task_id) is None, f"{task_id} ran"
    print("\nfailed dependencies:\n" + "\n".join(lines))


def test_a_cycle_is_rejected(flow: Flow) -> None:
    # Given a two-job and a three-job cycle, each produced in one go,
    x, y = flow.job("cyc-x"), flow.job("cyc-y")
    x["depends_on"], y["depends_on"] = [y["task_id"]], [x["task_id"]]
    r, s, t = flow.job("cyc-r"), flow.job("cyc-s"), flow.job("cyc-t")
    r["depends_on"], s["depends_on"], t["depends_on"] = \
        [s["task_id"]], [t["task_id"]], [r["task_id"]]
    # and a three-job cycle closed by a job produced after the others wait,
    u, v, w = flow.job("late-u"), flow.job("late-v"), flow.job("late-w")
    u["depends_on"], v["depends_on"], w["depends_on"] = \
        [v["task_id"]], [w["task_id"]], [u["task_id"]]
    flow.produce([(0, None, x), (0, None, y), (1, None, r), (1, None, s), (1, None, t),
                  (2, None, u), (2, None, v)])
    flow.wait(lambda: flow.count("waiting") >= 2, 30, "the open chain to wait")
    flow.produce([(2, None, w)])
    together = [m["task_id"] for m in (x, y, r, s, t)]
    ids = [*together, *(m["task_id"] for m in (u, v, w))]
    rows = _final(flow, ids, 30)
    outcomes = {i[len(flow.prefix) + 1:]: (rows[i]["status"], rows[i]["error_code"])
                for i in ids}
    # then every job of a cycle admitted together is rejected with dependency.cycle; the
    # job that closes a cycle is too, and the ones admitted before it, which waited for
    # it, fail with dependency.failed naming it (and its code); none ran.
    cycle, failed = ("rejected", "dependency.cycle"), ("failed", "dependency.failed")
    assert outcomes == {**{i[len(flow.prefix) + 1:]: cycle for i in together},
                        "late-w": cycle, "late-v": failed, "late-u": failed}, outcomes
    assert w["task_id"] in rows[v["task_id"]]["error_message"]
    assert "dependency.cycle" in rows[v["task_id"]]["error_message"]
    assert v["task_id"] in rows[u["task_id"]]["error_message"]
    assert not set(flow.starts("preprocess")) & set(ids)

"""The benchmark harness without the stack: one table from the benchmarks' result files
(each goal judged, a missing benchmark a "not run" row), results.json and the three plots;
and the overhead breakdown's arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.bench_overhead import breakdown
from tests.bench.bench_report import report
from tests.bench.common import quantile

BRIDGE = """cores: 2
bridge: 40000 jobs x 3 runs, median = 3,100 jobs/s (runs: 3,000, 3,100, 3,200)
naive: 2000 jobs x 3 runs, median = 155 jobs/s (runs: 150, 155, 160)
ratio: 20.0x (goal: >= 50x)
"""


def _results(folder: Path, gpu_fraction: float = 0.985) -> None:
    samples = [0.3 + i / 1000 for i in range(20)]
    chain = [0.013 + i / 10000 for i in range(20)]
    files = {
        "dispatch": {"rows": 1_000_000, "small": {"p50_ms": 0.5, "p99_ms": 1.0},
                     "large": {"p50_ms": 0.6, "p99_ms": 1.2}},
        "overhead": {"rate": 50, "ratio_idle_p50": 20.0, "baseline": {
            "idle_p50_ms": 15.0, "idle_p99_ms": 20.0, "idle_runs": [{"samples_s": chain}],
            "load": {"p50_ms": 16.0, "p99_ms": 30.0, "samples_s": chain}},
            "ours": {"idle_p50_ms": 300.0, "idle_p99_ms": 700.0, "idle_samples_s": samples,
                     "idle_runs": [], "load": {
                         "overhead": {"p50_ms": 9000.0, "p99_ms": 15000.0}, "jobs": 100,
                         "completed": 100, "drained_in_s": 50.0, "samples_s": samples}}},
        "gpu": {"sleep_s": 2.0, "ratio": 1.4, "ours": {
            "fraction": gpu_fraction, "jobs": 3, "intervals": [[0, 2], [2.02, 4.02], [4.05, 6]]},
            "baseline": {"fraction": 0.7, "jobs": 2, "intervals": [[0, 2], [2.9, 4.9]]}},
        "backlog": {"jobs": 100_000, "bridge_rss_mb": 120.0, "bridge_peak_rss_mb": 150.0,
                    "redis": {"bytes": 9000, "keys": 4, "messages": 3, "status_keys": 0,
                              "status_bytes": 0}, "window": 3, "pg_row_bytes": 10**8,
                    "pg_rows": 100_000, "pg_bytes": 200 * 2**20, "lost": 0, "rejected": 0,
                    "committed_offsets": 100_000, "drain_subset_s": 90,
                    "drain_rate_per_s": 4.0, "drain_full_estimate_s": 25_000,
                    "admission_curve": [[0.0, 1500], [0.5, 1600], [1.0, 1400]]},
    }
    for name, body in files.items():
        (folder / f"{name}.json").write_text(json.dumps(body))
    (folder / "bridge.txt").write_text(BRIDGE)


def _row(text: str, start: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {start}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_one_table_with_every_goal_judged(tmp_path: Path) -> None:
    _results(tmp_path)
    text, out = report(tmp_path)

    assert _row(text, "admission")[1:] == ["3,100", "155", "20.0x", ">= 50x vs the seed loop",
                                           "**no**"]
    assert _row(text, "dispatcher")[-1] == "yes"
    assert _row(text, "orchestration overhead p50")[1:4] == ["300.0", "15.0", "20.0x"]
    assert _row(text, "orchestration overhead p50")[-1] == "**no**"
    assert _row(text, "gpu busy")[1] == "98.50" and _row(text, "gpu busy")[-1] == "yes"
    assert _row(text, "backlog 100,000: bridge RSS")[-1] == "yes"
    assert _row(text, "backlog 100,000: lost")[-1] == "yes"
    assert _row(text, "backlog 100,000: Redis, Celery")[-1] == "yes"
    assert _row(text, "backlog 100,000: Redis, status cache")[-1] == "yes"
    assert _row(text, "built-in engine")[1] == "not run"
    saved = json.loads(out.read_text())
    assert saved["cores"] >= 1 and len(saved["rows"]) == len(text.splitlines()) - 2
    assert sorted(saved["plots"]) == ["admission.png", "gpu_timeline.png", "latency.png"]
    for name in saved["plots"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("fraction,met", [(0.9699, "**no**"), (0.97, "yes")])
def test_the_gpu_goal_is_a_threshold(tmp_path: Path, fraction: float, met: str) -> None:
    _results(tmp_path, gpu_fraction=fraction)
    assert _row(report(tmp_path)[0], "gpu busy")[-1] == met


def test_nothing_run_is_a_table_of_not_run_rows(tmp_path: Path) -> None:
    text, out = report(tmp_path)
    rows = json.loads(out.read_text())["rows"]
    assert rows and all(r["ours"] == "not run" for r in rows)
    assert not list(tmp_path.glob("*.png")) and "not run" in text


def test_the_overhead_is_the_time_outside_the_stages() -> None:
    stages = {name: {"started": 100 + i, "succeeded": 100 + i + 0.5, "duration_s": 0.45}
              for i, name in enumerate(("preprocess", "gpu", "encode", "upload"))}
    stages["callback"] = {"started": 104.0}
    line = {"status": "completed", "received": 99.5, "queued": 99.8, "stages": stages}
    parts = breakdown(99.0, 104.1, line)
    assert parts is not None
    assert parts["total"] == pytest.approx(5.1) and parts["inside_stages"] == pytest.approx(1.8)
    assert parts["overhead"] == pytest.approx(3.3)
    assert parts["between_stages"] == pytest.approx(2.0)  # four hops of 0.5 s
    assert parts["stage_bookkeeping"] == pytest.approx(0.2)
    assert breakdown(99.0, 104.1, {**line, "status": "failed"}) is None
    del stages["gpu"]["succeeded"]
    assert breakdown(99.0, 104.1, line) is None


def test_quantiles() -> None:
    assert quantile([3, 1, 2], 0.5) == 2 and quantile([0, 10], 0.99) == pytest.approx(9.9)
    assert quantile([], 0.5) != quantile([], 0.5)  # NaN

"""``make bench``'s last step: one table of every figure from the benchmarks' results,
``bench-results/results.json``, and the plots (PNG) next to it.

Reads what each benchmark left in ``bench-results/``: ``bridge.txt`` (the admission
benchmark's output), ``dispatch.json``, ``media.json``, ``overhead.json``, ``gpu.json``,
``backlog.json``; a missing one is a row marked "not run". The table is Markdown, so the
README can carry it as printed.

    .venv/bin/python tests/bench/bench_report.py [--results bench-results]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.common import RESULTS  # noqa: E402


@dataclass
class Row:
    figure: str
    ours: str
    baseline: str = "-"
    ratio: str = "-"
    goal: str = "-"
    met: str = "-"


def _num(value: float, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def bridge_rows(folder: Path) -> list[Row]:
    """From the admission benchmark's printed lines (its script is kept as it is)."""
    path = folder / "bridge.txt"
    text = path.read_text() if path.is_file() else ""
    ours = re.search(r"bridge: .*= ([\d,.]+) jobs/s", text)
    naive = re.search(r"naive: .*= ([\d,.]+) jobs/s", text)
    goal = re.search(r"goal: >= ([\d.]+)x", text)
    if not ours:
        return [Row("admission, Kafka -> durable row (jobs/s)", "not run")]
    o = float(ours.group(1).replace(",", ""))
    if not naive:
        return [Row("admission, Kafka -> durable row (jobs/s)", _num(o, 0))]
    b = float(naive.group(1).replace(",", ""))
    want = float(goal.group(1)) if goal else None
    publish = re.search(r"naive\+publish: .*median ([\d,.]+) jobs/s", text)
    label = "admission, Kafka -> durable row (jobs/s; baseline: the seed loop"
    if publish:
        p = float(publish.group(1).replace(",", ""))
        label += f"; with its publish {p:,.0f}/s, x{o / p:.1f}"
    return [Row(label + ")", _num(o, 0), _num(b, 0),
                f"{o / b:.1f}x", f">= {want:g}x vs the seed loop" if want else "-",
                _met(o / b >= want if want else None))]


def dispatch_rows(data: dict[str, Any] | None) -> list[Row]:
    if data is None:
        return [Row("dispatcher pick p99 at 1M backlog rows (ms)", "not run")]
    large, small = data["large"], data["small"]
    ratio = large["p99_ms"] / small["p99_ms"]
    return [Row(f"dispatcher pick p99 at {data['rows']:,} rows (ms; baseline: 1,000 rows)",
                _num(large["p99_ms"], 2), _num(small["p99_ms"], 2), f"{ratio:.2f}x",
                "p99 < 5 ms, ratio < 1.5", _met(large["p99_ms"] < 5 and ratio < 1.5))]


def overhead_rows(data: dict[str, Any] | None) -> list[Row]:
    if data is None:
        return [Row("orchestration overhead p50 at idle (ms)", "not run")]
    ours, base = data["ours"], data["baseline"]
    ratio = ours["idle_p50_ms"] / base["idle_p50_ms"]
    rate = data["rate"]
    load = ours["load"]
    return [
        Row("orchestration overhead p50 at idle (ms; baseline: plain 5-step chain)",
            _num(ours["idle_p50_ms"]), _num(base["idle_p50_ms"]), f"{ratio:.1f}x", "<= 2x",
            _met(ratio <= 2)),
        Row("orchestration overhead p99 at idle (ms)", _num(ours["idle_p99_ms"]),
            _num(base["idle_p99_ms"]), f"{ours['idle_p99_ms'] / base['idle_p99_ms']:.1f}x"),
        Row(f"overhead p50 / p99 at {rate:g} jobs/s offered (ms; {load['completed']}/"
            f"{load['jobs']} jobs done at {load['completed'] / load['drained_in_s']:.1f}/s: "
            "queueing)", f"{_num(load['overhead']['p50_ms'], 0)} / "
            f"{_num(load['overhead']['p99_ms'], 0)}",
            f"{_num(base['load']['p50_ms'])} / {_num(base['load']['p99_ms'])}",
            f"{load['overhead']['p50_ms'] / base['load']['p50_ms']:.0f}x"),
    ]


def gpu_rows(data: dict[str, Any] | None) -> list[Row]:
    if data is None:
        return [Row("gpu busy with a backlog (%)", "not run")]
    ours, base = data["ours"], data["baseline"]
    return [Row(f"gpu busy, {ours['jobs']} jobs of {data['sleep_s']:g} s in backlog (%; "
                "baseline: stage after stage)", _num(100 * ours["fraction"], 2),
                _num(100 * base["fraction"], 2), f"{data['ratio']:.2f}x", ">= 97 %",
                _met(ours["fraction"] >= 0.97))]


def backlog_rows(data: dict[str, Any] | None) -> list[Row]:
    if data is None:
        return [Row("backlog in Kafka, workers stopped", "not run")]
    n = data["jobs"]
    redis = data["redis"]
    window = data["window"]
    return [
        Row(f"backlog {n:,}: bridge RSS, peak (MB)", f"{_num(data['bridge_rss_mb'], 0)}, "
            f"{_num(data['bridge_peak_rss_mb'], 0)}", goal="< 200 MB",
            met=_met(data["bridge_peak_rss_mb"] < 200)),
        Row(f"backlog {n:,}: Redis, Celery's keys (KiB, messages)",
            f"{redis['bytes'] / 1024:.1f}, {redis['messages']}",
            goal=f"<= the window ({window} jobs)", met=_met(redis["messages"] <= window)),
        Row(f"backlog {n:,}: Redis, status cache sonic:status:* (MiB, keys)",
            f"{redis.get('status_bytes', 0) / 2**20:.1f}, {redis.get('status_keys', 0):,}",
            goal="bounded by the window", met=_met(redis.get("status_keys", 0) <= window)),
        Row(f"backlog {n:,}: PostgreSQL rows, MiB of row data",
            f"{data['pg_rows']:,}, " + (f"{data['pg_row_bytes'] / 2**20:.0f}"
                                        if "pg_row_bytes" in data else "-")),
        Row(f"backlog {n:,}: lost (ids missing; offsets committed)",
            f"{data['lost']} ({data['committed_offsets']:,} committed)", goal="0",
            met=_met(data["lost"] == 0 and data["committed_offsets"] == n
                     and data["rejected"] == 0)),
        Row(f"backlog drain, first {data['drain_subset_s']:.0f} s only (jobs/s; whole backlog "
            "at that rate)", f"{data['drain_rate_per_s']:.1f} "
            f"({data['drain_full_estimate_s'] / 3600:.1f} h)"),
    ]


def media_rows(data: dict[str, Any] | None) -> list[Row]:
    if data is None:
        return [Row("built-in engine 512x512 (frames/s)", "not run")]
    rows = []
    for key, engine in data.items():
        if key.startswith("engine_"):
            best = max(v for k, v in engine.items() if k.startswith("batch"))
            rows.append(Row(f"built-in engine 512x512 {key[7:]} (frames/s; baseline: one "
                            "frame a step)", _num(best), _num(engine["naive_fps"]),
                            f"{engine['speedup']:.2f}x"))
    enc = data["encode"]
    rows.append(Row("encode 512x512 (x real time; baseline: via PNG files)",
                    _num(enc["stream_x_realtime"], 2), _num(enc["png_x_realtime"], 2),
                    f"{enc['speedup']:.2f}x"))
    hand = data.get("handoff")
    if hand:
        raw, h264 = hand["raw"], hand["h264"]
        rows += [
            Row("gpu -> encode hand-off (MB per video-second; baseline: raw frames)",
                _num(h264["bytes_per_video_s"] / 1e6, 2), _num(raw["bytes_per_video_s"] / 1e6),
                f"1/{hand['cut']:.1f}", ">= 10x fewer bytes", _met(hand["cut"] >= 10)),
            Row(f"gpu stage with the hand-off ({hand['device']}, s; baseline: raw frames)",
                _num(h264["gpu_stage_s"], 2), _num(raw["gpu_stage_s"], 2),
                f"{hand['gpu_stage_ratio']:.2f}x", "not slower (<= 1.05x, noise)",
                _met(hand["gpu_stage_ratio"] <= 1.05)),
            Row("encode stage from the hand-off (s; baseline: from raw frames)",
                _num(h264["encode_s"], 2), _num(raw["encode_s"], 2),
                f"{h264['encode_s'] / raw['encode_s']:.2f}x", "same final video",
                _met(hand["identical_video"])),
        ]
    return rows


def table(rows: list[Row]) -> str:
    head = Row("figure", "ours", "baseline", "ratio", "goal", "met?")
    lines = [head, Row(*["---"] * 6), *rows]
    return "\n".join("| " + " | ".join(asdict(r).values()) + " |" for r in lines)


def plots(folder: Path, data: dict[str, Any]) -> list[Path]:
    """latency.png, gpu_timeline.png, admission.png from what the benchmarks recorded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    over = data.get("overhead")
    if over:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        curves = [("ours, idle (overhead)", over["ours"]["idle_samples_s"]),
                  (f"ours, {over['rate']:g}/s (overhead)", over["ours"]["load"]["samples_s"]),
                  ("plain chain, idle", [s for r in over["baseline"]["idle_runs"]
                                         for s in r.get("samples_s", [])]),
                  (f"plain chain, {over['rate']:g}/s",
                   over["baseline"]["load"].get("samples_s", []))]
        for label, values in curves:
            if values:
                ms = sorted(v * 1000 for v in values)
                ax.plot(ms, [(i + 1) / len(ms) for i in range(len(ms))], label=label)
        ax.set_xscale("log")
        ax.set_xlabel("ms (log)")
        ax.set_ylabel("fraction of jobs")
        ax.set_title("Orchestration latency: ours (produce to callback minus stages) vs "
                     "a plain Celery chain", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        made.append(_save(fig, folder / "latency.png"))
    gpu = data.get("gpu")
    if gpu:
        fig, axes = plt.subplots(2, 1, figsize=(9, 3.5), sharex=True)
        for ax, key, label in ((axes[0], "ours", "ours (backlog)"),
                               (axes[1], "baseline", "stage after stage")):
            spans = [(a, b - a) for a, b in gpu[key]["intervals"]]
            ax.broken_barh(spans, (0, 1), facecolors="tab:green")
            ax.set_yticks([])
            ax.set_ylabel(label, rotation=0, ha="right", fontsize=8)
            ax.set_title(f"{label}: gpu busy {100 * gpu[key]['fraction']:.1f} %", fontsize=8)
        axes[1].set_xlabel("seconds from the first gpu start")
        made.append(_save(fig, folder / "gpu_timeline.png"))
    backlog = data.get("backlog")
    if backlog and backlog.get("admission_curve"):
        fig, ax = plt.subplots(figsize=(8, 3.5))
        curve = backlog["admission_curve"]  # rows per half second (a batch shares a time)
        per_s: dict[int, int] = {}
        for t, c in curve:
            per_s[int(t)] = per_s.get(int(t), 0) + c
        ax.bar(list(per_s), list(per_s.values()), width=0.9, align="edge", alpha=0.6,
               label="jobs admitted per second")
        ax.set_xlabel("seconds from the first admission")
        ax.set_ylabel("jobs/s")
        total, cumulative = 0, []
        for _, c in curve:
            total += c
            cumulative.append(total)
        ax2 = ax.twinx()
        ax2.plot([t + 0.5 for t, _ in curve], cumulative, color="tab:red", label="admitted")
        ax2.set_ylabel("jobs admitted (cumulative)")
        ax.set_title(f"Admission of a {backlog['jobs']:,}-job Kafka backlog (no worker running)",
                     fontsize=9)
        ax.grid(True, alpha=0.3)
        made.append(_save(fig, folder / "admission.png"))
    return made


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def report(folder: Path) -> tuple[str, Path]:
    """Print-ready table and the path of results.json (plots written beside it)."""
    data = {name: _load(folder, f"{name}.json")
            for name in ("dispatch", "media", "overhead", "gpu", "backlog")}
    rows = (bridge_rows(folder) + dispatch_rows(data["dispatch"]) + overhead_rows(
        data["overhead"]) + gpu_rows(data["gpu"]) + backlog_rows(data["backlog"])
            + media_rows(data["media"]))
    text = table(rows)
    made = plots(folder, {k: v for k, v in data.items() if v})
    out = folder / "results.json"
    out.write_text(json.dumps({
        "cores": os.cpu_count(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": [asdict(r) for r in rows], "plots": [p.name for p in made],
        "runs": {k: v for k, v in data.items() if v}}, indent=2, default=float))
    return text, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.results.mkdir(exist_ok=True)
    text, out = report(args.results)
    print(f"\nBenchmarks on {os.cpu_count()} cores ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
    print(text)
    print(f"\nresults: {out}; plots: {', '.join(sorted(p.name for p in args.results.glob('*.png')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

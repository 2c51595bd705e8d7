"""A real run through Kafka, the bridge, the three worker pools and a callback receiver;
then every metric a Grafana panel (ops/grafana/) or an alert rule (ops/prometheus/) uses
is on the real endpoints: the bridge on SONIC_METRICS_PORT, the gpu, cpu and io pools
on the next three ports (prefork: the children's metrics served by each parent)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from pipeline.celery_config import POOLS
from pipeline.commands import worker_argv
from pipeline.settings import Settings, load
from tests.pipeline.media.helpers import PORTRAIT, speak
from tests.support import pools
from tests.support.receiver import CallbackReceiver, Reply

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "ops" / "grafana").glob("*.json"))
RULES = ROOT / "ops" / "prometheus" / "alerts.yml"
SECRET = "whsec_" + "c2NyYXBlLXRlc3Qtc2VjcmV0LWZvci1zaWduaW5n"
#: The sample names of a metric family, by its type.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
            "summary": ("_count", "_sum", "")}
#: PromQL words that are not metric names.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric (sample) names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = re.findall(r"(?<![\w$:.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", expr)
    return {n for n in names if n.lower() not in KEYWORDS}


def used_metrics() -> dict[str, set[str]]:
    """Metric name -> where it is used (``dashboard: panel`` or ``alert: name``)."""
    used: dict[str, set[str]] = {}
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                for name in metric_names(target["expr"]):
                    used.setdefault(name, set()).add(f"{path.name}: {panel['title']}")
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            for name in metric_names(rule["expr"]):
                used.setdefault(name, set()).add(f"alert {rule['alert']}")
    return used


def test_metric_names_are_read_from_promql() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, host) (rate(sonic_callback_seconds_bucket'
            '{host=~"a|b"}[$__rate_interval]))) / clamp_min(sum(up{job="x"}), 1) '
            '> bool $backlog_max or absent(sonic_worker_processes{pool="gpu"})')
    assert metric_names(expr) == {"sonic_callback_seconds_bucket", "up",
                                  "sonic_worker_processes"}
    used = used_metrics()
    assert "sonic_kafka_consumer_lag" in used and "sonic_worker_processes" in used
    assert len(used) >= 30


@dataclass
class Run:
    settings: Settings
    db_engine: Engine
    receiver: CallbackReceiver
    base_port: int
    topic: str

    def row(self, task_id: str) -> dict[str, Any] | None:
        with self.db_engine.connect() as conn:
            row = conn.execute(text("SELECT * FROM tasks WHERE task_id = :t"),
                               {"t": task_id}).mappings().first()
        return dict(row) if row is not None else None

    def scrape(self) -> dict[str, dict[str, list[Any]]]:
        """Per endpoint (bridge, gpu, cpu, io): sample name -> samples. A metric declared
        without a series yet (a gauge of an empty backlog) is there with no samples."""
        out = {}
        for offset, name in enumerate(("bridge", *POOLS)):
            body = requests.get(f"http://127.0.0.1:{self.base_port + offset}/metrics",
                                timeout=10).text
            samples: dict[str, list[Any]] = {}
            for family in text_string_to_metric_families(body):
                for suffix in SUFFIXES.get(family.type, ("",)):
                    samples.setdefault(family.name + suffix, [])
                for sample in family.samples:
                    samples.setdefault(sample.name, []).append(sample)
            out[name] = samples
        return out


def _wait(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def run(stack: Settings, db_engine: Engine, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Run]:
    """Bridge and pools on a topic of their own; a job that renders, the same job again,
    one that fails (no face) and one that is not JSON; the first callback answered 503.
    A Redis database and metrics ports of its own (tests/support/pools.py)."""
    with pools.lease("test_metrics_scrape", stack) as lease:
        yield from _run(stack, db_engine, tmp_path_factory.mktemp("scrape"), lease)


def _run(stack: Settings, db_engine: Engine, root: Path, lease: pools.Lease
         ) -> Iterator[Run]:
    inputs = root / "inputs"
    inputs.mkdir()
    face = inputs / "face.jpg"
    face.write_bytes(PORTRAIT.read_bytes())
    speech = speak(inputs / "speech.wav", "Hello there.")
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(inputs / "wall.png")
    topic = f"scrape-{os.getpid()}-{int(time.time())}"
    base = lease.metrics_port
    overrides = {
        "topic_tasks": topic, "topic_dlq": f"{topic}-dlq", "consumer_group": f"{topic}-g",
        "redis_db": lease.redis_db, "state_dir": root / "state", "input_roots": [inputs],
        "storage_backend": "local", "storage_dir": root / "objects",
        "allow_private_networks": True, "webhook_secret": SECRET,
        "webhook_breaker_failures": 1, "webhook_breaker_open_s": 4,
        "heartbeat_interval_s": 1, "lease_ttl_s": 6, "worker_concurrency": 1,
        "time_limit_s": 120, "metrics_port": base, "lag_interval_s": 1,
    }
    (root / "state").mkdir()
    settings = load(**overrides)
    env = pools.env_of(overrides)
    admin = KafkaAdminClient(**stack.kafka_client_config())
    admin.create_topics([NewTopic(topic, 2, 1), NewTopic(f"{topic}-dlq", 1, 1)])
    receiver = CallbackReceiver(SECRET, script=[Reply(503, headers={"Retry-After": "1"})])
    receiver.start()
    procs = []
    try:
        for pool in POOLS:
            procs.append(pools.spawn(worker_argv(pool, settings), env,
                                     root / f"worker-{pool}.log"))
        procs.append(pools.spawn([sys.executable, "-m", "bridge"], env, root / "bridge.log"))
        job = {"image_url": str(face), "audio_url": str(speech),
               "config": {"min_resolution": 128, "inference_steps": 2, "seed": 3},
               "callback_url": receiver.url("/hook")}
        producer = KafkaProducer(acks="all", **stack.kafka_client_config())
        for key, value in (
                (b"a", dict(job, task_id=f"{topic}-ok")),
                (b"b", dict(job, task_id=f"{topic}-wall", image_url=str(inputs / "wall.png"))),
                (b"a", dict(job, task_id=f"{topic}-ok")),  # the same job again
                (b"c", None)):  # not JSON
            producer.send(topic, key=key, value=json.dumps(value).encode() if value
                          else b"{this is not json")
        producer.flush()
        producer.close()
        yield Run(settings, db_engine, receiver, base, topic)
    finally:
        pools.stop(procs, timeout_s=30)
        receiver.stop()
        with db_engine.begin() as conn:
            conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": topic})
            conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": topic})
        admin.delete_topics([topic, f"{topic}-dlq"])
        admin.close()


def _value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, [])
               if all(s.labels.get(k) == v for k, v in labels.items()))


def test_every_metric_of_the_dashboards_and_alerts_is_served(run: Run) -> None:
    ok, wall = f"{run.topic}-ok", f"{run.topic}-wall"
    _wait(lambda: (run.row(ok) or {}).get("callback_status") == "delivered", 240,
          "the rendered job's callback")
    assert run.row(ok)["status"] == "completed"
    assert (run.row(wall) or {})["error_code"] == "image.no_face"
    # The first callback was answered 503: retried, its destination's breaker opened
    # (one failure is the threshold here), and a callback was held back by it.
    _wait(lambda: run.row(wall)["callback_status"] == "delivered", 60, "the failed job's callback")

    def settled() -> dict[str, dict[str, list[Any]]] | None:
        scraped = run.scrape()
        bridge = scraped["bridge"]
        ready = (_value(bridge, "sonic_bridge_commits_total", topic=run.topic) > 0
                 and len(bridge.get("sonic_kafka_consumer_lag", [])) == 2
                 and _value(bridge, "sonic_kafka_consumer_lag", topic=run.topic) == 0
                 and _value(scraped["io"], "sonic_webhook_paused_total") > 0)
        return scraped if ready else None

    scraped = _wait(settled, 60, "the commits, the lag and a held-back callback")
    served = {name for samples in scraped.values() for name in samples}
    missing = {name: sorted(where) for name, where in used_metrics().items()
               if name not in served}
    assert missing == {}

    bridge, gpu, cpu, io = (scraped[k] for k in ("bridge", "gpu", "cpu", "io"))
    assert _value(bridge, "sonic_bridge_consumed_total", topic=run.topic) == 4
    assert _value(bridge, "sonic_bridge_admitted_total", topic=run.topic) == 2
    assert _value(bridge, "sonic_bridge_duplicates_total", topic=run.topic) == 1
    assert _value(bridge, "sonic_bridge_rejected_total", code="message.invalid_json") == 1
    assert _value(bridge, "sonic_bridge_dlq_total", topic=run.topic, outcome="sent") == 1
    assert {s.labels["partition"] for s in bridge["sonic_kafka_consumer_lag"]} == {"0", "1"}
    assert {s.labels["queue"] for s in bridge["sonic_celery_queue_depth"]} >= {
        "preprocess", "gpu", "encode", "upload", "callback"}
    assert {s.labels["pool"] for s in bridge["sonic_pool_inflight_jobs"]} == set(POOLS)
    assert _value(gpu, "sonic_worker_processes", pool="gpu") >= 1
    assert _value(gpu, "sonic_gpu_busy_seconds_total", engine="builtin") > 0
    assert _value(gpu, "sonic_stage_duration_seconds_count", stage="gpu", engine="builtin",
                  outcome="succeeded") == 1
    assert _value(cpu, "sonic_task_failed_total", stage="preprocess",
                  code="image.no_face") == 1
    assert _value(io, "sonic_callback_attempts_total", outcome="retry") >= 1
    assert _value(io, "sonic_callback_attempts_total", outcome="delivered") == 2
    assert _value(io, "sonic_stage_retries_total", stage="callback") >= 1
    assert _value(io, "sonic_callback_seconds_count") >= 3

"""Worker metrics for Prometheus: stage durations per stage and engine, failures by code,
retries, lease takeovers, callback attempts and latency per destination, gpu busy seconds.

Celery's prefork children each record into files under ``PROMETHEUS_MULTIPROC_DIR``
(prometheus_client's multiprocess mode); the worker's parent serves them all on one port:
``SONIC_METRICS_PORT`` + 1 + the pool's index (gpu, cpu, io), the bridge using the base
port itself. The metric objects are made on first use, after the directory is set. In
the bridge's process (no directory) the same objects live on the default registry and
are served with the bridge's own (the reconciler's takeovers are counted there).

    sonic_stage_duration_seconds{stage,engine,outcome}  histogram; outcome succeeded,
                                              failed, retrying, stopped
    sonic_task_failed_total{stage,code}       jobs failed, by the code that failed them
    sonic_stage_retries_total{stage,code}     stage runs retried later (backoff)
    sonic_lease_takeovers_total{stage,reason} a stage taken from its holder: ``expired``
                                              (re-queued by the reconciler, or claimed by
                                              another copy past the lease: a dead worker),
                                              ``stalled`` (re-sent, its message vanished),
                                              ``lost`` (a live worker found its lease gone)
    sonic_gpu_busy_seconds_total{engine}      seconds the gpu stage ran, any outcome
    sonic_callback_attempts_total{host,outcome}  delivered, retry (timeout, 429, 5xx,
                                              connection), rejected (another 4xx)
    sonic_callback_seconds{host}              histogram, one attempt's request to answer
    sonic_worker_processes{pool}              live worker processes (children) per pool

``host`` is the destination ``scheme://host:port``; past ``MAX_HOSTS`` destinations in
one process the rest count as ``other``, so a fleet of receivers never makes a series
each.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.settings import STAGES

log = logging.getLogger(__name__)

#: Stage durations from seconds to the hours of a long gpu render.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 10800)
#: One callback attempt: from a fast receiver to SONIC_WEBHOOK_TIMEOUT_S.
CALLBACK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Destinations with a series of their own per process; the rest are ``other``.
MAX_HOSTS = 50
OTHER_HOST = "other"
#: The stage outcomes of the duration histogram.
OUTCOMES = ("succeeded", "failed", "retrying", "stopped")


#: Threads may use the metrics first at the same moment (the remote engine's calls): the
#: objects are made under this lock, once (a second registration would raise).
_made = threading.Lock()


def _metrics() -> dict[str, Any]:
    with _made:
        return _make_metrics()


@lru_cache(maxsize=1)
def _make_metrics() -> dict[str, Any]:
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "duration": Histogram("sonic_stage_duration_seconds", "Seconds a stage ran, by "
                              "stage, engine and outcome", ["stage", "engine", "outcome"],
                              buckets=BUCKETS),
        "retries": Counter("sonic_stage_retries_total", "Stage runs retried later, by stage "
                           "and error code", ["stage", "code"]),
        "takeovers": Counter("sonic_lease_takeovers_total", "Stages taken from their lease "
                             "holder (expired, stalled, lost)", ["stage", "reason"]),
        "gpu_busy": Counter("sonic_gpu_busy_seconds_total", "Seconds the gpu stage ran, "
                            "any outcome, by engine", ["engine"]),
        "callbacks": Counter("sonic_callback_attempts_total", "Callback attempts by "
                             "destination and outcome (delivered, retry, rejected)",
                             ["host", "outcome"]),
        "callback_seconds": Histogram("sonic_callback_seconds", "Seconds one callback "
                                      "attempt took, by destination", ["host"],
                                      buckets=CALLBACK_BUCKETS),
        "processes": Gauge("sonic_worker_processes", "Live worker processes per pool",
                           ["pool"], multiprocess_mode="livesum"),
        "failed": Counter("sonic_task_failed_total", "Jobs failed, by stage and error code",
                          ["stage", "code"]),
        # Callback flow control per destination (scheme://host:port): the breaker's state as
        # last seen by any worker (0 closed, 1 half-open, 2 open), deliveries held back.
        "breaker": Gauge("sonic_webhook_breaker_state", "Callback circuit breaker per "
                         "destination: 0 closed, 1 half-open, 2 open", ["host"],
                         multiprocess_mode="mostrecent"),
        "paused": Counter("sonic_webhook_paused_total", "Callbacks delayed without a request, "
                          "by destination and reason (breaker_open, rate_limited)",
                          ["host", "reason"]),
        # The remote engine per API key (its id, never the key): calls by result (ok,
        # throttled, server_error, transport, unauthorized, rejected; the success rate is
        # ok over all), latency, state (0 ready, 1 cooling, 2 disabled); jobs that waited.
        "remote_calls": Counter("sonic_remote_calls_total", "Remote engine calls by key and "
                                "result", ["key", "result"]),
        "remote_seconds": Histogram("sonic_remote_call_seconds", "Seconds a remote engine "
                                    "call took, by key", ["key"], buckets=BUCKETS),
        "remote_key": Gauge("sonic_remote_key_state", "Remote engine key: 0 ready, "
                            "1 cooling, 2 disabled", ["key"], multiprocess_mode="mostrecent"),
        "remote_waits": Counter("sonic_remote_waits_total", "Jobs that waited for a remote "
                                "credential, by reason (cooling, rate, capacity)", ["reason"]),
    }


def observe_stage(stage: str, outcome: str, seconds: float, engine: str = "") -> None:
    """One stage run ended (``outcome`` one of :data:`OUTCOMES`); the gpu stage's seconds
    also count as gpu busy time."""
    _metrics()["duration"].labels(stage, engine, outcome).observe(seconds)
    if stage == "gpu":
        _metrics()["gpu_busy"].labels(engine).inc(seconds)


def count_retry(stage: str, code: str) -> None:
    _metrics()["retries"].labels(stage, code).inc()


def count_takeover(stage: str, reason: str, n: int = 1) -> None:
    """``n`` stages taken from their holder: ``expired``, ``stalled`` or ``lost``."""
    if n:
        _metrics()["takeovers"].labels(stage, reason).inc(n)


_hosts: set[str] = set()


def host_bucket(host: str) -> str:
    """``host`` itself for the first :data:`MAX_HOSTS` destinations seen, else ``other``."""
    if host in _hosts:
        return host
    if len(_hosts) < MAX_HOSTS:
        _hosts.add(host)
        return host
    return OTHER_HOST


def observe_callback(host: str, outcome: str, seconds: float) -> None:
    """One callback attempt to ``host`` (``delivered``, ``retry`` or ``rejected``)."""
    bucket = host_bucket(host)
    _metrics()["callbacks"].labels(bucket, outcome).inc()
    _metrics()["callback_seconds"].labels(bucket).observe(seconds)


def worker_started(pool: str, queues: tuple[str, ...], engine: str) -> None:
    """In a worker child: count it live, and show its pool's stage series at zero from the
    start (a rate over a series that appears with its first event misses that event)."""
    made = _metrics()
    made["processes"].labels(pool).inc()
    for stage in (s for s in queues if s in STAGES):
        for outcome in OUTCOMES:
            made["duration"].labels(stage, engine, outcome)
        made["takeovers"].labels(stage, "lost")
    if "gpu" in queues:
        made["gpu_busy"].labels(engine)


def count_failure(stage: str, code: str) -> None:
    _metrics()["failed"].labels(stage, code).inc()


def set_breaker_state(host: str, value: int) -> None:
    _metrics()["breaker"].labels(host).set(value)


def count_paused(host: str, reason: str) -> None:
    _metrics()["paused"].labels(host, reason).inc()


def observe_remote_call(key: str, result: str, seconds: float) -> None:
    _metrics()["remote_calls"].labels(key, result).inc()
    _metrics()["remote_seconds"].labels(key).observe(seconds)


def set_remote_key_state(key: str, value: int) -> None:
    _metrics()["remote_key"].labels(key).set(value)


def count_remote_wait(reason: str) -> None:
    _metrics()["remote_waits"].labels(reason).inc()


def serve_worker_metrics(directory: Path, port: int, host: str) -> bool:
    """In a worker's parent, before it forks: collect the children's files, serve them."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    from prometheus_client import CollectorRegistry, start_http_server, values
    from prometheus_client.multiprocess import MultiProcessCollector

    # prometheus_client picks its value class when first imported, which may have been
    # before this hook set the directory: pick again, so children write their files.
    values.ValueClass = values.get_value_class()

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.warning("metrics: cannot listen on %s:%d (%s); not served", host, port, exc)
        return False
    return True


def process_exited(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)

"""The remote engine against a real HTTP inference service (tests/support/inference_server.py)
that enforces per-key limits and answers 429/503/401 on cue, with the pool in the real
Redis: no key over its limit in any second, load spread per strategy, cooled keys back,
a refused key disabled, every job finished; waits reported; two worker processes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY
from sqlalchemy import Engine, text

from pipeline.engines import RenderRequest, RenderResult, get_engine, reset_engines
from pipeline.engines.credentials import PREFIX, Grant, Outcome, key_id
from pipeline.engines.remote import RemoteEngine
from pipeline.errors import Cancelled, EngineError, StageTimeout
from pipeline.settings import Settings, load
from pipeline.stages.local import LocalContext
from tests.pipeline.test_credentials import CRED_REDIS_DB
from tests.support.inference_server import InferenceServer, write_inputs

pytestmark = pytest.mark.integration

#: Frames the service renders for the 1 s of test audio (Sonic's rule: 2 * 12 - 1).
FRAMES = 23


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_inputs(tmp_path_factory.mktemp("remote-inputs"))


@pytest.fixture
def fresh_pool(stack: Settings) -> Iterator[redis.Redis]:
    """The pool's keys in the test database start empty; no engine loaded from before."""
    client = redis.Redis(host=stack.redis_host, port=stack.redis_port, db=CRED_REDIS_DB)
    for name in client.scan_iter(PREFIX + "*"):
        client.delete(name)
    reset_engines()
    yield client
    reset_engines()
    client.close()


def settings_for(server: InferenceServer, keys: str, **extra: object) -> Settings:
    options: dict[str, object] = dict(
        redis_db=CRED_REDIS_DB, remote_url=server.base_url, remote_keys=keys,
        remote_rate="50/second", remote_strategy="round_robin", remote_cooldown_min_s=0.5,
        remote_cooldown_max_s=4.0, remote_timeout_s=20.0)
    options.update(extra)
    return load(**options)


def engine_for(settings: Settings) -> RemoteEngine:
    engine = RemoteEngine()
    engine.load(settings)
    return engine


def job(inputs: tuple[Path, Path], tmp: Path, name: str, seed: int = 0) -> RenderRequest:
    return RenderRequest(image_path=inputs[0], audio_path=inputs[1],
                         out_dir=tmp / name / "render", min_resolution=64, seed=seed,
                         face_box=(8, 8, 56, 56))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def render_all(engine: RemoteEngine, jobs: list[RenderRequest], threads: int) -> list[RenderResult]:
    results: list[RenderResult] = []
    errors: list[BaseException] = []
    pending = list(jobs)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                request = pending.pop()
            try:
                result = engine.render(request, lambda done: None, lambda: False)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return
            with lock:
                results.append(result)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=120)
    assert not errors, errors
    return results


def test_jobs_under_contention_keep_every_key_within_its_limit_and_all_finish(
        fresh_pool: redis.Redis, inputs: tuple[Path, Path], tmp_path: Path, unique: str) -> None:
    keys = [f"{unique}-{k}" for k in "abc"]
    with InferenceServer({k: [(2, 1.0), (7, 60.0)] for k in keys}) as server:
        engine = engine_for(settings_for(server, ",".join(keys), remote_rate="2/second;7/minute",
                                         remote_strategy="least_loaded"))
        started = time.monotonic()
        results = render_all(engine, [job(inputs, tmp_path, f"j{i}", i) for i in range(18)], 5)
        elapsed = time.monotonic() - started
    assert len(results) == 18 and all(r.frames == FRAMES and r.frames_path.is_file()
                                      for r in results)
    assert server.over_limit == [] and all(c.status == 200 for c in server.calls)
    for key in keys:
        assert server.most_in_window(key, 1.0) <= 2, key
        assert 4 <= len(server.arrivals(key)) <= 7  # within 7 a minute, so spread
    assert elapsed >= 2.0  # 18 calls at 6 a second could not be faster


@pytest.mark.parametrize("strategy,expected", [
    ("round_robin", {"a": 4, "b": 4, "c": 4}),
    ("weighted", {"a": 8, "b": 2, "c": 2}),
    ("least_loaded", {"a": 4, "b": 4, "c": 4}),
])
def test_each_strategy_spreads_the_calls_its_way(fresh_pool: redis.Redis,
                                                 inputs: tuple[Path, Path], tmp_path: Path,
                                                 unique: str, strategy: str,
                                                 expected: dict[str, int]) -> None:
    names = {k: f"{unique}-{k}" for k in "abc"}
    keys = json.dumps([{"key": names["a"], "weight": 4}, names["b"], names["c"]])
    with InferenceServer({v: [(50, 1.0)] for v in names.values()}, delay_s=0) as server:
        engine = engine_for(settings_for(server, keys, remote_strategy=strategy))
        order = []
        for i in range(12):
            engine.render(job(inputs, tmp_path, f"{strategy}-{i}"), lambda d: None, lambda: False)
            order.append(server.calls[-1].key)
    assert {k: Counter(order)[v] for k, v in names.items()} == expected
    if strategy == "round_robin":
        assert order[:3] == order[3:6] == order[6:9] and len(set(order[:3])) == 3


def test_cooled_keys_recover_and_a_refused_key_is_disabled(
        fresh_pool: redis.Redis, inputs: tuple[Path, Path], tmp_path: Path, unique: str,
        caplog: pytest.LogCaptureFixture) -> None:
    a, b, c = (f"{unique}-{k}" for k in "abc")
    with InferenceServer({k: [(20, 1.0)] for k in (a, b, c)}, delay_s=0) as server:
        server.cue(a, 429, retry_after="2")
        server.cue(b, 503, times=2)
        server.deny(c, 401)
        engine = engine_for(settings_for(server, f"{a},{b},{c}"))
        with caplog.at_level(logging.WARNING, logger="pipeline.engines.remote"):
            for i in range(10):
                result = engine.render(job(inputs, tmp_path, f"f{i}"), lambda d: None,
                                       lambda: False)
                assert result.frames == FRAMES
                time.sleep(0.15)
        snapshot = engine.pool.snapshot()
    # The 429 (Retry-After: 2): no request with that key for 2 s, then it works again.
    throttled, = server.arrivals(a, 429)
    later = [t for t in server.arrivals(a) if t > throttled]
    assert later and min(later) - throttled >= 2.0 and server.arrivals(a, 200)
    # Two 503s in a row: 0.5 s, then (after that cool-down ended) 1 s; then it recovers.
    first, second = server.arrivals(b, 503)
    assert second - first >= 0.5
    assert min(t for t in server.arrivals(b, 200) if t > second) - second >= 1.0
    # The 401: one request, never another; the key is disabled, logged and shown.
    assert server.arrivals(c) == server.arrivals(c, 401) and len(server.arrivals(c)) == 1
    states = {k["id"]: k["state"] for k in snapshot["keys"]}
    assert states == {key_id(a): "ready", key_id(b): "ready", key_id(c): "disabled"}
    assert sample("sonic_remote_calls_total", key=key_id(a), result="throttled") == 1
    assert sample("sonic_remote_calls_total", key=key_id(b), result="server_error") == 2
    assert sample("sonic_remote_calls_total", key=key_id(c), result="unauthorized") == 1
    assert sample("sonic_remote_calls_total", key=key_id(a), result="ok") >= 1
    assert sample("sonic_remote_call_seconds_count", key=key_id(b)) >= 3
    assert sample("sonic_remote_key_state", key=key_id(c)) == 2
    assert sample("sonic_remote_key_state", key=key_id(a)) == 0
    assert f"remote key {key_id(c)} disabled: HTTP 401" in caplog.text
    assert not any(secret in caplog.text for secret in (a, b, c))


def test_when_every_key_cools_the_job_waits_says_so_and_finishes(
        fresh_pool: redis.Redis, inputs: tuple[Path, Path], tmp_path: Path,
        unique: str) -> None:
    a, b = f"{unique}-a", f"{unique}-b"
    with InferenceServer({a: [(20, 1.0)], b: [(20, 1.0)]}, delay_s=0) as server:
        server.cue(a, 429, retry_after="2")
        server.cue(b, 503, retry_after="2")
        settings = settings_for(server, f"{a},{b}")
        engine = engine_for(settings)
        request = job(inputs, tmp_path, f"wait-{unique}")
        ctx = LocalContext(settings, {"task_id": "t"}, request.out_dir.parent)
        ctx.begin("gpu")
        before = sample("sonic_remote_waits_total", reason="cooling")
        seen: list[dict] = []
        watcher = threading.Thread(target=lambda: (time.sleep(1.0), seen.append(
            engine.pool.snapshot())))
        watcher.start()
        started = time.monotonic()
        result = engine.render(request, lambda done: ctx.progress(100 * done), ctx.should_stop)
        waited = time.monotonic() - started
        watcher.join()
    assert result.frames == FRAMES and waited >= 1.9
    names = [name for _, name, _ in ctx.events]
    assert names == ["waiting_for_credential", "credential_acquired"]
    assert ctx.events[0][2]["reason"] == "cooling" and 1.0 < ctx.events[0][2]["wait_s"] <= 2.0
    assert ctx.events[1][2]["waited_s"] >= 1.9
    assert sample("sonic_remote_waits_total", reason="cooling") == before + 1
    assert [w["job"] for w in seen[0]["waiting"]] == [f"wait-{unique}"]
    assert engine.pool.snapshot()["waiting"] == []
    assert ctx.percent == 100.0


@pytest.mark.parametrize("limit,code", [("deadline", "task.deadline"),
                                        ("budget", "stage.timeout")])
def test_a_wait_ends_with_the_jobs_deadline_or_budget_and_no_request(
        fresh_pool: redis.Redis, inputs: tuple[Path, Path], tmp_path: Path, unique: str,
        limit: str, code: str) -> None:
    from datetime import datetime, timedelta, timezone

    a, b = f"{unique}-a", f"{unique}-b"
    with InferenceServer({a: [(20, 1.0)], b: [(20, 1.0)]}) as server:
        settings = settings_for(server, f"{a},{b}", remote_cooldown_max_s=60)
        engine = engine_for(settings)
        for _ in range(2):  # both keys cool down for 30 s
            grant = engine.pool.acquire()
            assert isinstance(grant, Grant)
            engine.pool.release(grant, Outcome.COOL, retry_after_s=30)
        task = {"task_id": "t", "deadline": None}
        if limit == "deadline":
            task["deadline"] = datetime.now(timezone.utc) + timedelta(seconds=1)
        ctx = LocalContext(settings, task, tmp_path)
        ctx.begin("gpu")
        if limit == "budget":
            ctx.limit_time(1.0)
        started = time.monotonic()
        with pytest.raises((Cancelled, StageTimeout)) as stopped:
            engine.render(job(inputs, tmp_path, "late"), ctx.progress, ctx.should_stop)
    assert stopped.value.code == code and 1.0 <= time.monotonic() - started < 2.5
    assert server.calls == [] and [n for _, n, _ in ctx.events] == ["waiting_for_credential"]


def test_every_key_refused_fails_the_job_with_engine_unavailable(
        fresh_pool: redis.Redis, inputs: tuple[Path, Path], tmp_path: Path, unique: str) -> None:
    a, b = f"{unique}-a", f"{unique}-b"
    with InferenceServer({a: [(20, 1.0)], b: [(20, 1.0)]}) as server:
        server.deny(a, 401)
        server.deny(b, 403)
        engine = engine_for(settings_for(server, f"{a},{b}"))
        with pytest.raises(EngineError) as failed:
            engine.render(job(inputs, tmp_path, "denied"), lambda d: None, lambda: False)
    assert failed.value.code == "engine.unavailable" and "disabled" in failed.value.message
    assert sorted(c.status for c in server.calls) == [401, 403]


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_another_4xx_fails_the_job_and_blames_no_key(
        fresh_pool: redis.Redis, inputs: tuple[Path, Path], tmp_path: Path, unique: str,
        status: int) -> None:
    a = f"{unique}-a"
    with InferenceServer({a: [(20, 1.0)]}) as server:
        server.cue(a, status)
        engine = engine_for(settings_for(server, a))
        with pytest.raises(EngineError) as failed:
            engine.render(job(inputs, tmp_path, "bad"), lambda d: None, lambda: False)
        state, = engine.pool.snapshot()["keys"]
    assert failed.value.code == "engine.failed"
    assert f"HTTP {status}" in failed.value.message and "refused" in failed.value.message
    assert (state["state"], state["rejected"], state["failed"]) == ("ready", 1, 0)
    assert len(server.calls) == 1


def test_the_service_may_answer_an_mp4_and_what_it_sends_is_checked(
        fresh_pool: redis.Redis, inputs: tuple[Path, Path], tmp_path: Path, unique: str) -> None:
    a = f"{unique}-a"
    with InferenceServer({a: [(50, 1.0)]}, mp4=True) as server:
        engine = engine_for(settings_for(server, a))
        result = engine.render(job(inputs, tmp_path, "mp4", seed=5), lambda d: None,
                               lambda: False)
        assert result.video_path is not None and result.video_path.name == "remote.mp4"
        assert (result.width, result.height, result.frames) == (64, 64, FRAMES)
        fields = server.calls[-1].fields
        assert fields == {"min_resolution": "64", "inference_steps": "25",
                          "dynamic_scale": "1.0", "motion_scale": "1.0", "seed": "5",
                          "face_box": "8,8,56,56"}
        server.mp4, server.frames_type = False, "text/html"
        with pytest.raises(EngineError) as wrong:
            engine.render(job(inputs, tmp_path, "html"), lambda d: None, lambda: False)
    assert wrong.value.code == "engine.failed" and "text/html" in wrong.value.message
    assert list((tmp_path / "html" / "render").iterdir()) == []


def test_without_a_url_or_keys_the_engine_is_unavailable(fresh_pool: redis.Redis) -> None:
    for overrides in ({"remote_keys": "k"}, {"remote_url": "http://127.0.0.1:9"},
                      {"remote_url": "ftp://x", "remote_keys": "k"},
                      {"remote_url": "http://127.0.0.1:9", "remote_keys": "[oops"}):
        with pytest.raises(EngineError) as refused:
            get_engine("remote", load(**overrides))
        assert refused.value.code == "engine.unavailable"


def test_on_a_worker_the_gpu_stage_journals_the_wait(
        fresh_pool: redis.Redis, db_engine: Engine, inputs: tuple[Path, Path], tmp_path: Path,
        unique: str) -> None:
    """The real gpu stage function under the real runner (lease, watchdog, events)."""
    import shutil

    from pipeline.stages import inference
    from pipeline.stages.artifacts import write_json
    from pipeline.stages.runner import StageOutcome, run_stage
    from tests.pipeline.stages.conftest import insert_task, task_events

    a = f"{unique}-a"
    task_id = insert_task(db_engine, f"remote-{unique}", stage="gpu")
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET engine = 'remote', status = 'running' "
                          "WHERE task_id = :t"), {"t": task_id})
    with InferenceServer({a: [(20, 1.0)]}) as server:
        settings = settings_for(server, a, work_dir=tmp_path, heartbeat_interval_s=1,
                                lease_ttl_s=30, default_engine="builtin")
        work = tmp_path / task_id
        work.mkdir()
        shutil.copy(inputs[0], work / "face.png")
        shutil.copy(inputs[1], work / "audio.wav")
        write_json(work / "prepared.json", {"audio": {"duration_s": 1.0}, "image": {
            "size": [64, 64], "face_in_crop": [8, 8, 56, 56]}})
        engine = get_engine("remote", settings)
        grant = engine.pool.acquire()
        engine.pool.release(grant, Outcome.COOL, retry_after_s=1.5)
        result = run_stage(settings, db_engine, task_id, "gpu", inference.run)
    assert result.outcome is StageOutcome.CONTINUE
    events = task_events(db_engine, task_id, "stage", "event", "detail")
    assert [(s, e) for s, e, _ in events] == [
        ("gpu", "started"), ("gpu", "waiting_for_credential"), ("gpu", "credential_acquired"),
        ("gpu", "succeeded")]
    assert events[1][2]["reason"] == "cooling"
    render = json.loads((work / "render.json").read_text())
    assert (render["engine"], render["frames"]) == ("remote", FRAMES)


WORKER = """
import json, sys, threading
from pathlib import Path
from pipeline.engines import RenderRequest, get_engine
from pipeline.settings import load
engine = get_engine("remote", load())
image, audio, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
done = []
def work(n):
    for i in range(4):
        request = RenderRequest(image, audio, out / f"{n}-{i}" / "render", min_resolution=64)
        done.append(engine.render(request, lambda d: None, lambda: False).frames)
threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(done))
"""


def test_two_worker_processes_share_one_pool(fresh_pool: redis.Redis, stack: Settings,
                                             inputs: tuple[Path, Path], tmp_path: Path,
                                             unique: str) -> None:
    keys = [f"{unique}-a", f"{unique}-b"]
    with InferenceServer({k: [(2, 1.0)] for k in keys}) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SONIC_")}
        env.update(SONIC_REDIS_HOST=stack.redis_host, SONIC_REDIS_PORT=str(stack.redis_port),
                   SONIC_REDIS_DB=str(CRED_REDIS_DB), SONIC_REMOTE_URL=server.base_url,
                   SONIC_REMOTE_KEYS=",".join(keys), SONIC_REMOTE_RATE="2/second",
                   SONIC_REMOTE_STRATEGY="least_loaded", SONIC_REMOTE_COOLDOWN_MIN_S="0.5")
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(inputs[0]), str(inputs[1]),
                                   str(tmp_path / f"w{n}")], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for n in range(2)]
        outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert json.loads(out) == [FRAMES] * 8
    assert server.over_limit == []
    for key in keys:
        assert server.most_in_window(key, 1.0) <= 2
        assert len(server.arrivals(key, 200)) == 8
    assert not any(key in err for key in keys for _, err in outputs)

"""The main job: render the bundled sample end to end through the real stack.

    .venv/bin/python ops/demo.py        (``make demo`` brings the stack up first)

A portrait (tests/data/astronaut.jpg, public domain) and speech synthesized by espeak-ng
are published to Kafka in the seed article's message shape; the bridge admits the job,
the worker pools run the chain, the MP4 lands in the object store, and a signed callback
reaches a receiver started here (the tests' ``CallbackReceiver``, which checks the
signature). Prints where the MP4 is; exits non-zero on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

from kafka import KafkaProducer  # noqa: E402
from sqlalchemy import text  # noqa: E402

from pipeline.celery_config import POOLS  # noqa: E402
from pipeline.commands import worker_argv  # noqa: E402
from pipeline.settings import Settings, load  # noqa: E402
from pipeline.state.db import make_db_engine  # noqa: E402
from tests.support.receiver import CallbackReceiver  # noqa: E402 - the tests' receiver

PORTRAIT = ROOT / "tests" / "data" / "astronaut.jpg"
SPEECH = ("Hello! I am a talking portrait, rendered by the sonic pipeline. "
          "Kafka buffers the jobs, Postgres keeps the record, and Celery does the work.")
TIMEOUT_S = 900


def prepare_inputs(settings: Settings) -> tuple[Path, Path]:
    inputs = settings.state_dir / "demo" / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    image = inputs / "portrait.jpg"
    shutil.copy(PORTRAIT, image)
    audio = inputs / "speech.wav"
    subprocess.run(["espeak-ng", "-s", "160", "-w", str(audio), SPEECH], check=True,
                   capture_output=True, timeout=60)
    return image, audio


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            cwd=ROOT, start_new_session=True)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_final(settings: Settings, task_id: str) -> dict[str, Any]:
    db_engine = make_db_engine(settings, pool_size=1)
    last = None
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            with db_engine.connect() as conn:
                row = conn.execute(text("SELECT * FROM tasks WHERE task_id = :t"),
                                   {"t": task_id}).mappings().first()
            if row is not None:
                now = (row["status"], row["stage"], round(row["progress"]))
                if now != last:
                    print(f"  status={now[0]:<9} stage={now[1] or '-':<10} progress={now[2]}%",
                          flush=True)
                    last = now
                if row["status"] in ("completed", "failed", "rejected", "cancelled") and \
                        row["callback_status"] in ("delivered", "failed", "none"):
                    return dict(row)
            time.sleep(0.5)
    finally:
        db_engine.dispose()
    raise SystemExit(f"demo: the job did not finish within {TIMEOUT_S}s")


def main() -> int:
    base = load()
    image, audio = prepare_inputs(base)
    receiver = CallbackReceiver(base.webhook_secret.get_secret_value()).start()
    callback_url = receiver.url("/sonic/callback")

    overrides = {"SONIC_INPUT_ROOTS": str(image.parent),
                 "SONIC_ALLOW_PRIVATE_NETWORKS": "true",  # the receiver is on loopback
                 "SONIC_STORAGE_BACKEND": "local"}
    env = {**os.environ, **overrides}
    settings = load(input_roots=[image.parent], allow_private_networks=True,
                    storage_backend="local")
    logs = settings.state_dir / "demo"
    procs = [start(worker_argv(pool, settings), env, logs / f"worker-{pool}.log")
             for pool in POOLS]
    procs.append(start([sys.executable, "-m", "bridge"], env, logs / "bridge.log"))
    try:
        task_id = f"demo-{uuid.uuid4().hex[:12]}"
        message = {  # the seed article's shape, as upstream sends it
            "task_id": task_id, "audio_url": str(audio), "image_url": str(image),
            "duration": 8.0,
            "config": {"min_resolution": 512, "expand_ratio": 0.18, "inference_steps": 25,
                       "dynamic_scale": 1.1, "motion_scale": 1.05},
            "callback_url": callback_url,
            "metadata": {"source": "make demo"},
        }
        producer = KafkaProducer(acks="all", **settings.kafka_client_config())
        meta = producer.send(settings.topic_tasks, key=task_id.encode(),
                             value=json.dumps(message).encode()).get(timeout=60)
        producer.close()
        print(f"demo: published {task_id} to {settings.topic_tasks} "
              f"[{meta.partition}] @ {meta.offset}", flush=True)
        row = wait_final(settings, task_id)
    finally:
        stop(procs)
        receiver.stop()
    return report(settings, row, receiver)


def report(settings: Settings, row: dict[str, Any], receiver: CallbackReceiver) -> int:
    print(f"demo: {row['task_id']} {row['status']}", flush=True)
    if row["status"] != "completed":
        print(f"demo: error {row['error_code']}: {row['error_message']}")
        return 1
    path = settings.storage_dir / row["result_key"]
    probe = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries",
         "stream=codec_name,width,height:format=duration", "-of", "json", str(path)],
        capture_output=True, text=True, check=True).stdout)
    streams = ", ".join(
        s["codec_name"] + (f" {s['width']}x{s['height']}" if "width" in s else "")
        for s in probe["streams"])
    print(f"demo: video  {path}")
    print(f"demo: url    {row['result_url']}")
    print(f"demo: ffprobe {streams}, {float(probe['format']['duration']):.2f}s")
    hook = receiver.requests[-1] if receiver.requests else None
    verified = hook is not None and hook.verified
    print(f"demo: callback {row['callback_status']}, signature verified: {verified}")
    if verified and hook.payload:
        print(f"demo: timings {json.dumps(hook.payload['timings'])}")
    return 0 if verified else 1


if __name__ == "__main__":
    sys.exit(main())

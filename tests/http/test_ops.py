"""The operator's side: health naming the failing service, metrics, the OpenAPI schema,
and settings the service refuses to start without."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.http_stack import ROOT, TOKENS, HttpStack
from tests.support.server import free_port

pytestmark = [pytest.mark.integration]


def test_healthz_is_ok_on_the_live_stack(http_stack: HttpStack) -> None:
    answer = httpx.get(f"{http_stack.base_url}/healthz", timeout=10)
    assert answer.status_code == 200
    assert answer.json()["checks"] == {"postgres": "ok", "redis": "ok", "kafka": "ok"}


def test_healthz_names_the_services_that_are_down(http_stack: HttpStack) -> None:
    """Redis and Kafka down, PostgreSQL and the object store up: healthz names the two, and
    an upload is refused (503) without leaving its files in the store."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(http_stack.env, SONIC_REDIS_PORT=str(free_port()),
               SONIC_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    before = set(http_stack.objects("sonic-http-uploads"))
    server = subprocess.Popen([sys.executable, "-m", "pipeline.http", "--port", str(port)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

    def upload() -> httpx.Response:  # waits for a broker for seconds: beside the checks
        with http_stack.portrait.open("rb") as image, http_stack.speech.open("rb") as audio:
            return httpx.post(f"{base}/v1/tasks", timeout=60, files={
                "image": image, "audio": audio},
                headers={"Authorization": f"Bearer {TOKENS['acme']}"})

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{base}/openapi.json", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        with ThreadPoolExecutor(1) as pool:
            posted = pool.submit(upload)
            answer = httpx.get(f"{base}/healthz", timeout=10)
            assert answer.status_code == 503, answer.text
            body = answer.json()
            assert body["failing"] == ["redis", "kafka"]
            assert body["checks"]["postgres"] == "ok"
            assert body["error"]["code"] == "service.unavailable"
            assert "redis" in body["error"]["message"] and "kafka" in body["error"]["message"]
            refused = posted.result()
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "service.unavailable"
        assert "kafka" in refused.json()["error"]["message"]
        assert set(http_stack.objects("sonic-http-uploads")) == before
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_metrics_count_requests_by_route(http_stack: HttpStack) -> None:
    with http_stack.client("acme") as acme:
        acme.get("/v1/tasks/no-such-task")
    text = httpx.get(f"{http_stack.base_url}/metrics", timeout=10).text
    assert 'sonic_http_requests_total{method="GET",route="/v1/tasks/{task_id}",status="404"}' \
        in text
    assert "sonic_http_request_seconds_bucket" in text


def test_the_openapi_schema_describes_the_api_and_its_auth(http_stack: HttpStack) -> None:
    schema = httpx.get(f"{http_stack.base_url}/openapi.json", timeout=10).json()
    assert {"/v1/tasks", "/v1/tasks/{task_id}", "/v1/tasks/{task_id}/events",
            "/v1/tasks/{task_id}/video", "/healthz"} <= set(schema["paths"])
    upload = schema["paths"]["/v1/tasks"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert any(s["type"] == "http" and s["scheme"] == "bearer"
               for s in schema["components"]["securitySchemes"].values())


@pytest.mark.parametrize("name, value, named", [
    ("SONIC_API_TOKENS", "acme:short,globex", "SONIC_API_TOKENS"),
    ("SONIC_INPUT_BUCKETS", "another-bucket", "SONIC_UPLOAD_BUCKET")])
def test_the_service_refuses_to_start_with_bad_settings(http_stack: HttpStack, name: str,
                                                       value: str, named: str) -> None:
    env = dict(http_stack.env, **{name: value})
    done = subprocess.run([sys.executable, "-m", "pipeline.http", "--port", str(free_port())],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "config.invalid" in done.stderr and named in done.stderr

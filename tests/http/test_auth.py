"""Bearer tokens per tenant and the page's session cookie, on the real service."""

from __future__ import annotations

import httpx
import pytest

from pipeline.errors import CODES
from tests.support.http_stack import TOKENS, HttpStack

pytestmark = [pytest.mark.integration]

PROTECTED = [("GET", "/v1/tasks"), ("GET", "/v1/tasks/some-task"),
             ("GET", "/v1/tasks/some-task/events"), ("GET", "/v1/tasks/some-task/video"),
             ("POST", "/v1/tasks"), ("POST", "/v1/session")]
BAD_HEADERS = [None, "Bearer", "Bearer wrong-token-0123456789",
               f"Basic {TOKENS['acme']}", f"Bearer {TOKENS['acme']}x",
               f"Bearer {TOKENS['acme'][:-1]}", "token " + TOKENS["acme"]]


@pytest.mark.parametrize("header", BAD_HEADERS)
def test_every_route_refuses_a_missing_or_bad_token(http_stack: HttpStack,
                                                    header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for method, path in PROTECTED:
        answer = httpx.request(method, http_stack.base_url + path, headers=headers, timeout=10)
        assert answer.status_code == 401, (method, path, answer.text)
        assert answer.json()["error"]["code"] == "auth.unauthorized"
        assert answer.headers["www-authenticate"].startswith("Bearer")


def test_a_tenant_sees_only_its_own_jobs(http_stack: HttpStack) -> None:
    with http_stack.client("acme") as acme, http_stack.client("globex") as globex, \
            http_stack.client("*") as operator:
        task_id = http_stack.submit(acme)
        assert acme.get(f"/v1/tasks/{task_id}").json()["tenant"] == "acme"
        for path in ("", "/events", "/video"):
            answer = globex.get(f"/v1/tasks/{task_id}{path}")
            assert answer.status_code == 404 and \
                answer.json()["error"]["code"] == "task.not_found", path
        assert task_id not in {t["task_id"] for t in globex.get("/v1/tasks").json()["tasks"]}
        # The job's tenant is the token's: a form field cannot choose another.
        other = http_stack.submit(globex, tenant="acme")
        http_stack.wait_admitted(other)
        assert http_stack.row(other)["tenant"] == "globex"
        # An operator sees every tenant and may filter by one; a tenant's filter for
        # another tenant finds nothing.
        assert operator.get(f"/v1/tasks/{task_id}").status_code == 200
        http_stack.wait_admitted(task_id)
        mine = operator.get("/v1/tasks", params={"tenant": "acme", "limit": 200}).json()
        assert task_id in {t["task_id"] for t in mine["tasks"]}
        assert {t["tenant"] for t in mine["tasks"]} == {"acme"}
        assert acme.get("/v1/tasks", params={"tenant": "globex"}).json()["tasks"] == []


def test_the_session_cookie_serves_gets_only_and_dies_when_forged(
        http_stack: HttpStack) -> None:
    with http_stack.client("acme") as acme:
        task_id = http_stack.submit(acme)
        made = acme.post("/v1/session")
        assert made.status_code == 200 and made.json()["tenant"] == "acme"
        cookie = made.cookies["sonic_session"]
        set_cookie = made.headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "samesite=strict" in set_cookie
        assert "path=/v1" in set_cookie
    with httpx.Client(base_url=http_stack.base_url, cookies={"sonic_session": cookie},
                      timeout=10) as browser:
        assert browser.get(f"/v1/tasks/{task_id}").status_code == 200
        # Writes need the header: a cross-site form carrying the cookie makes nothing.
        with http_stack.portrait.open("rb") as image, http_stack.speech.open("rb") as audio:
            posted = browser.post("/v1/tasks", files={"image": image, "audio": audio})
        assert posted.status_code == 401
        assert browser.post("/v1/session").status_code == 401
    payload, _, signature = cookie.partition(".")
    forged = [payload + "." + signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB"),
              payload[:-3] + "abc." + signature, "", "garbage", cookie + "x"]
    for value in forged:
        answer = httpx.get(f"{http_stack.base_url}/v1/tasks/{task_id}",
                           cookies={"sonic_session": value}, timeout=10)
        assert answer.status_code == 401, value


def test_every_error_code_the_service_gives_is_documented(http_stack: HttpStack) -> None:
    with http_stack.client("acme") as acme:
        answers = [acme.get("/v1/nowhere"), acme.get("/v1/tasks/none-such"),
                   acme.put("/v1/tasks"), acme.get("/v1/tasks", params={"status": "odd"}),
                   acme.get("/v1/tasks", params={"cursor": "bm90LWEtY3Vyc29y"}),
                   acme.get("/v1/tasks", params={"limit": "0"}), httpx.get(
                       f"{http_stack.base_url}/v1/tasks", timeout=10)]
    for answer in answers:
        assert answer.status_code >= 400
        assert answer.json()["error"]["code"] in CODES, answer.text

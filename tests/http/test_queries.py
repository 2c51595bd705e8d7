"""Reading jobs: one job, lists with filters and pages, the video before it exists."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.support.http_stack import HttpStack

pytestmark = [pytest.mark.integration]


def test_lists_filter_by_status_and_time_and_page_without_gaps(http_stack: HttpStack) -> None:
    with http_stack.client("globex") as globex:
        before = datetime.now(timezone.utc) - timedelta(seconds=1)
        made = [http_stack.submit(globex) for _ in range(3)]
        for task_id in made:
            http_stack.wait_admitted(task_id)
        seen: list[str] = []
        cursor = None
        for _ in range(20):
            params = {"limit": 2, "since": before.isoformat(), **({"cursor": cursor} if cursor
                                                                   else {})}
            page = globex.get("/v1/tasks", params=params).json()
            assert len(page["tasks"]) <= 2
            seen += [t["task_id"] for t in page["tasks"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert set(made) <= set(seen) and len(seen) == len(set(seen))
        times = [t["received_at"] for t in globex.get(
            "/v1/tasks", params={"since": before.isoformat()}).json()["tasks"]]
        assert times == sorted(times, reverse=True)
        # Nothing received after now; a status filter keeps only that status.
        later = (datetime.now(timezone.utc) + timedelta(minutes=1)).isoformat()
        assert globex.get("/v1/tasks", params={"since": later}).json()["tasks"] == []
        for status in ("completed", "received,queued,running", "failed"):
            wanted = set(status.split(","))
            found = globex.get("/v1/tasks", params={"status": status, "limit": 200}).json()
            assert {t["status"] for t in found["tasks"]} <= wanted


def test_a_malformed_id_in_the_path_is_400_never_a_500(http_stack: HttpStack) -> None:
    """A NUL byte (PostgreSQL refuses it in a string), a 129-character id, a leading dot,
    spaces and non-ASCII: task.invalid_id, before any query."""
    with http_stack.client("acme") as acme:
        for task_id in ("%00", "a%00b", "x" * 129, ".hidden", "a%20b", "%C3%A9", "a%0Ab"):
            for path in ("", "/events", "/video"):
                answer = acme.get(f"/v1/tasks/{task_id}{path}")
                assert answer.status_code == 400, (task_id, path, answer.text)
                assert answer.json()["error"]["code"] == "task.invalid_id"
                assert "not a task id" in answer.json()["error"]["message"]


def test_a_number_out_of_its_range_is_out_of_range_and_a_word_a_wrong_type(
        http_stack: HttpStack) -> None:
    with http_stack.client("acme") as acme:
        for query, code in (("limit=0", "message.out_of_range"),
                            ("limit=100000000", "message.out_of_range"),
                            ("limit=-1", "message.out_of_range"),
                            ("limit=many", "message.wrong_type")):
            answer = acme.get(f"/v1/tasks?{query}")
            assert answer.status_code == 400, (query, answer.text)
            assert answer.json()["error"]["code"] == code, (query, answer.text)
            assert "'limit'" in answer.json()["error"]["message"]


def test_unknown_jobs_are_404_and_a_video_not_made_yet_is_409(http_stack: HttpStack) -> None:
    with http_stack.client("acme") as acme:
        for task_id in ("no-such-task", "x" * 120, "a.b:c-d"):
            for path in ("", "/events", "/video"):
                answer = acme.get(f"/v1/tasks/{task_id}{path}")
                assert answer.status_code == 404, (task_id, path)
                assert answer.json()["error"]["code"] == "task.not_found"
        task_id = http_stack.submit(acme)
        view = acme.get(f"/v1/tasks/{task_id}").json()
        assert view["status"] in ("submitted", "received", "queued", "running")
        answer = acme.get(f"/v1/tasks/{task_id}/video")
        assert answer.status_code == 409 and answer.json()["error"]["code"] == "task.not_ready"

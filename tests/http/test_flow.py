"""A job from upload to video over the real service: a real HTTP client uploads, follows
the job's Server-Sent Events to ``completed``, resumes the stream, and fetches the video."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support.http_stack import HttpStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def read_events(client: httpx.Client, task_id: str, headers: dict[str, str] | None = None,
                timeout: float = 120, query: str = ""
                ) -> list[tuple[str | None, str, dict[str, Any]]]:
    """(id, event name, data) of every event until the server closes the stream."""
    out: list[tuple[str | None, str, dict[str, Any]]] = []
    current: dict[str, str] = {}
    with client.stream("GET", f"/v1/tasks/{task_id}/events{query}", headers=headers or {},
                       timeout=httpx.Timeout(10, read=timeout)) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if not line:
                if "data" in current:
                    out.append((current.get("id"), current.get("event", "message"),
                                json.loads(current["data"])))
                current = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                current[name] = value[1:] if value.startswith(" ") else value
    return out


def test_upload_is_followed_over_sse_to_completed_and_resumes(http_stack: HttpStack) -> None:
    with http_stack.client("acme") as client:
        task_id = http_stack.submit(client)
        events = read_events(client, task_id)
        statuses = [data["status"] for _, name, data in events if name == "status"]
        ids = [int(event_id) for event_id, name, _ in events if name == "status"]
        # Given the upload, when followed live, then every stage went by and it completed.
        assert events[-1][1] == "end" and events[-1][2]["status"] == "completed", events
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert statuses[-1] == "completed" and "running" in statuses
        # The stages before the upload each succeeded on the way; the upload's success is
        # the "completed" event itself (its own stage event follows it).
        succeeded = [data["stage"] for _, name, data in events
                     if name == "status" and data["event"] == "stage_succeeded"]
        assert ["preprocess", "gpu", "encode"] == [s for s in succeeded if s != "upload"], events
        assert [data["event"] for _, name, data in events if name == "status"][-1] == "completed"
        row = http_stack.row(task_id)
        assert row is not None and row["status"] == "completed" and row["tenant"] == "acme"
        assert row["payload"]["image_url"].startswith("s3://sonic-http-uploads/uploads/acme/")

        # Resumed from the middle: exactly the events after that id, then the end.
        middle = ids[len(ids) // 2]
        resumed = read_events(client, task_id, {"Last-Event-ID": str(middle)})
        assert [int(i) for i, name, _ in resumed if name == "status"] == \
            [i for i in ids if i > middle]
        assert resumed[-1][1] == "end"
        # Resumed after the final one: only what came later (the callback's), then the end.
        after = read_events(client, task_id, {"Last-Event-ID": str(ids[-1])})
        assert after[-1][1] == "end" and after[-1][0] is None
        assert all(int(i) > ids[-1] for i, name, _ in after if name == "status"), after
        # ?after= is the same as the header.
        assert [i for i, _, _ in read_events(client, task_id, query=f"?after={middle}")] == \
            [i for i, _, _ in resumed]

        view = client.get(f"/v1/tasks/{task_id}").json()
        assert view["status"] == "completed" and view["video_url"] == f"/v1/tasks/{task_id}/video"
        video = client.get(view["video_url"], follow_redirects=False)
        assert video.status_code == 307
        mp4 = httpx.get(video.headers["location"], timeout=30)
        assert mp4.status_code == 200 and mp4.content[4:8] == b"ftyp"

"""A job's Celery chain, built in one place from task names (never the task modules).

    preprocess -> gpu -> encode -> upload -> callback

Every signature takes the task id as its only argument (immutable: a stage's return
value is not passed on; stages load everything else from Postgres) and has the Celery
task id ``f"{task_id}:{stage}"``, so Flower and logs show which job a task belongs to.

Two ways to publish:

- :func:`dispatch_one`: ``chain(...).apply_async()``, one job at a time (reconciler).
- :class:`ChainPublisher`: many jobs per Redis round trip. For each (priority, first
  stage) it captures, once, the exact message Celery and kombu would push for the chain's
  first task (``prepare_steps`` + ``apply_async(chain=...)`` through a real Redis channel
  whose final ``_put`` is intercepted), turns it into a template, and then renders a
  job's message by substituting its task id, body and delivery tag. The rendered
  messages are LPUSHed to kombu's priority keys in one MULTI/EXEC per batch.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery, Signature, chain
from celery.canvas import _chain, _prepare_chain_from_options
from kombu.utils.json import dumps as kombu_dumps

from pipeline.celery_config import TASK_NAMES, celery_config
from pipeline.settings import STAGES, Settings

#: Task ids whose message can be rendered from a template: no character that JSON or
#: ``repr()`` (Celery's ``argsrepr``) would escape. Others take the exact, slower path.
TEMPLATE_SAFE_ID = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")

_PLACEHOLDER = "sonicTaskIdPlaceholder0"
_BODY_SLOT = "sonicBodySlot0"
_TAG_SLOT = "sonicTagSlot0"
_SLOTS = re.compile(f"({_PLACEHOLDER}|{_BODY_SLOT}|{_TAG_SLOT})")


def celery_task_id(task_id: str, stage: str) -> str:
    return f"{task_id}:{stage}"


def make_app(settings: Settings) -> Celery:
    """A Celery client app configured like the workers (no task modules imported)."""
    app = Celery("pipeline", set_as_current=False)
    app.config_from_object(celery_config(settings))
    return app


def signatures(app: Celery, task_id: str, priority: int,
               start: str = STAGES[0]) -> list[Signature]:
    """The chain's signatures from ``start`` to the last stage, in order."""
    stages = STAGES[STAGES.index(start):]
    return [
        app.signature(TASK_NAMES[stage], args=(task_id,), immutable=True,
                      task_id=celery_task_id(task_id, stage), priority=priority,
                      ignore_result=True)
        for stage in stages
    ]


def build_chain(app: Celery, task_id: str, priority: int, start: str = STAGES[0]) -> _chain:
    return chain(*signatures(app, task_id, priority, start))


def dispatch_one(app: Celery, task_id: str, priority: int, start: str = STAGES[0]) -> None:
    """Publish one job's chain the plain way (one Redis round trip or more)."""
    build_chain(app, task_id, priority, start).apply_async()


def capture(app: Celery, conn: Any, task_id: str, priority: int,
            start: str = STAGES[0]) -> tuple[str, dict[str, Any]]:
    """The Redis key and message kombu would push for the chain's first task.

    Runs Celery's own chain preparation and publish path on a real Redis channel of
    ``conn`` (a kombu connection) and stops at the transport's ``_put``.
    """
    c = build_chain(app, task_id, priority, start)
    tasks, _ = c.prepare_steps((), {}, c.tasks, app=app)
    first = tasks.pop()
    options = _prepare_chain_from_options({}, tasks, use_link=False)
    producer = app.amqp.Producer(conn, auto_declare=False)
    channel = producer.channel
    seen: list[tuple[str, dict[str, Any]]] = []

    def put(queue: str, message: dict[str, Any], **_: Any) -> None:
        pri = channel._get_message_priority(message, reverse=False)
        seen.append((channel._q_for_pri(queue, pri), message))

    channel._put = put
    channel._put_fanout = lambda *args, **kwargs: None  # no task-sent event
    try:
        first.apply_async(producer=producer, declare=[], **options)
    finally:
        del channel._put, channel._put_fanout
    if len(seen) != 1:
        raise RuntimeError(f"expected one message for {task_id!r}, captured {len(seen)}")
    return seen[0]


@dataclass(frozen=True)
class Template:
    """A first-task message with slots for the task id, the body and the delivery tag."""

    key: str
    parts: tuple[str, ...]
    body_parts: tuple[str, ...]

    @classmethod
    def from_message(cls, key: str, message: dict[str, Any]) -> Template:
        body = base64.b64decode(message["body"]).decode()
        framed = dict(message, body=_BODY_SLOT,
                      properties=dict(message["properties"], delivery_tag=_TAG_SLOT))
        return cls(key, tuple(_SLOTS.split(kombu_dumps(framed))),
                   tuple(body.split(_PLACEHOLDER)))

    def render(self, task_id: str, tag: str | None = None) -> bytes:
        body = base64.b64encode(task_id.join(self.body_parts).encode()).decode()
        values = {_PLACEHOLDER: task_id, _BODY_SLOT: body, _TAG_SLOT: tag or str(uuid.uuid4())}
        return "".join([values.get(part, part) for part in self.parts]).encode()


class ChainPublisher:
    """Publishes many jobs' chains per Redis round trip, in Celery's exact format."""

    def __init__(self, app: Celery, client: redis.Redis) -> None:
        self.app = app
        self.client = client
        self._conn = app.connection_for_write()
        self._templates: dict[tuple[int, str], Template] = {}

    def close(self) -> None:
        self._conn.release()

    def template(self, priority: int, start: str = STAGES[0]) -> Template:
        found = self._templates.get((priority, start))
        if found is None:
            key, message = capture(self.app, self._conn, _PLACEHOLDER, priority, start)
            found = Template.from_message(key, message)
            self._verify(found, priority, start)
            self._templates[(priority, start)] = found
        return found

    def message(self, task_id: str, priority: int, start: str = STAGES[0]) -> tuple[str, bytes]:
        """The Redis key and payload of one job's first task."""
        if TEMPLATE_SAFE_ID.fullmatch(task_id):
            tpl = self.template(priority, start)
            return tpl.key, tpl.render(task_id)
        key, message = capture(self.app, self._conn, task_id, priority, start)
        return key, kombu_dumps(message).encode()

    def publish(self, jobs: Sequence[tuple[str, int]], *, start: str = STAGES[0],
                marker: str | None = None) -> None:
        """LPUSH the chains of ``jobs`` (task id, priority) in one MULTI/EXEC.

        With ``marker``, the task ids are also added to that Redis hash in the same
        transaction: whoever finds a task id there knows its chain was pushed.
        """
        by_key: dict[str, list[bytes]] = {}
        for task_id, priority in jobs:
            key, payload = self.message(task_id, priority, start)
            by_key.setdefault(key, []).append(payload)
        pipe = self.client.pipeline(transaction=True)
        for key, payloads in by_key.items():
            pipe.lpush(key, *payloads)
        if marker is not None and jobs:
            pipe.hset(marker, mapping={task_id: "1" for task_id, _ in jobs})
        pipe.execute()

    def _verify(self, tpl: Template, priority: int, start: str) -> None:
        """Fail loudly if a rendered message differs from Celery's own (a Celery upgrade)."""
        sample = "verify-0.a:b@c"
        key, exact = capture(self.app, self._conn, sample, priority, start)
        tag = exact["properties"]["delivery_tag"]
        if key != tpl.key or tpl.render(sample, tag) != kombu_dumps(exact).encode():
            raise RuntimeError("the chain message template does not match Celery's message")


def queue_keys(queues: Iterable[str], steps: Sequence[int] = tuple(range(10)),
               sep: str = ":") -> list[str]:
    """Every Redis list key kombu uses for ``queues`` (one per priority step)."""
    return [q if pri == 0 else f"{q}{sep}{pri}" for q in queues for pri in steps]

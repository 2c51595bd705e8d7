"""A job's Celery chain, built in one place from task names (never the task modules).

    preprocess -> gpu -> encode -> upload -> callback

Every signature takes the task id as its only argument (immutable: a stage's return
value is not passed on; stages load everything else from Postgres) and has the Celery
task id ``f"{task_id}:{stage}"``, so Flower and logs show which job a task belongs to.

Published one job at a time (:func:`dispatch_one`): the dispatcher publishes no more than
its window of jobs ahead of the gpu, and the reconciler only what was lost. The message is
the one ``chain(...).apply_async()`` sends (the first task, carrying the rest in its
``chain`` option, last step first), published the way a stage publishes the next step
(:func:`pipeline.stages.glue.publish_next`): half the Python per job of building the
chain object first (~0.5 ms instead of ~1 ms on two cores), on a job's path to the gpu.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from celery import Celery, Signature, chain

from pipeline.celery_config import TASK_NAMES, celery_config
from pipeline.settings import STAGES, Settings


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


def build_chain(app: Celery, task_id: str, priority: int, start: str = STAGES[0]) -> Signature:
    return chain(*signatures(app, task_id, priority, start))


def dispatch_one(app: Celery, task_id: str, priority: int, start: str = STAGES[0]) -> None:
    """Publish one job's chain from ``start`` (one Redis round trip or more; raises the
    broker's errors)."""
    first, *rest = signatures(app, task_id, priority, start)
    first.apply_async(chain=rest[::-1])


def queue_keys(queues: Iterable[str], steps: Sequence[int] = tuple(range(10)),
               sep: str = ":") -> list[str]:
    """Every Redis list key kombu uses for ``queues`` (one per priority step)."""
    return [q if pri == 0 else f"{q}{sep}{pri}" for q in queues for pri in steps]

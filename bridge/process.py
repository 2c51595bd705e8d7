"""Steps 2-3 of a batch, run on the batch thread: admit, dead-letter.

    admit (Postgres, one transaction: jobs scheduled as received or waiting) -> DLQ (acked)

The :class:`BatchOutcome` tells the loop which records are durable. Postgres down: nothing of
the batch is (the loop reads it again). A DLQ produce failure: that record and the rest
of its partition are not. What runs next, and when, is the dispatcher's decision
(:mod:`pipeline.scheduler.dispatcher`), not this step's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from bridge import metrics
from bridge.admit import Admit
from bridge.decode import Decoded
from bridge.dlq import DeadLetters
from bridge.errors import TRANSIENT

log = logging.getLogger(__name__)


@dataclass
class BatchOutcome:
    batch: Decoded
    admitted: bool = True  #: False: Postgres failed; nothing of the batch is durable
    failed: dict[tuple[str, int], int] = field(default_factory=dict)  #: first DLQ failure
    admitted_jobs: int = 0  #: new jobs in the backlog
    error: str = ""


class Process:
    def __init__(self, admit: Admit, dead_letters: DeadLetters, topic: str) -> None:
        self.admit, self.dead_letters = admit, dead_letters
        self.topic = topic

    def __call__(self, batch: Decoded) -> BatchOutcome:
        out = BatchOutcome(batch)
        metrics.CONSUMED.labels(self.topic).inc(len(batch.records))
        if batch.records:
            try:
                admitted = self.admit(batch)
            except TRANSIENT as exc:
                log.error("admit: Postgres failed (%s); the batch will be read again", exc)
                return BatchOutcome(batch, admitted=False, error=str(exc))
            metrics.DUPLICATES.labels(self.topic).inc(admitted.duplicates)
            metrics.ADMITTED.labels(self.topic).inc(len(admitted.new))
            out.admitted_jobs = len(admitted.new)
            self._dead_letters(admitted.rejections, out)
        return out

    def _dead_letters(self, rejections: list, out: BatchOutcome) -> None:  # type: ignore[type-arg]
        if not rejections:
            return
        for rejection, ok in zip(rejections, self.dead_letters.send(rejections)):
            record = rejection.record
            metrics.DLQ.labels(self.topic, "sent" if ok else "failed").inc()
            if ok:
                metrics.REJECTED.labels(rejection.error.code).inc()
            else:
                where = (record.topic, record.partition)
                out.failed[where] = min(out.failed.get(where, record.offset), record.offset)

"""Steps 2-4 of a batch, run on the batch thread: admit, dead-letter, dispatch.

    admit (Postgres, one transaction) -> DLQ (acknowledged) -> dispatch (Redis, then queued)

The :class:`BatchOutcome` tells the loop which records are durable. Postgres down: nothing of
the batch is (the loop reads it again). A DLQ produce failure: that record and the rest
of its partition are not. Redis down: the admitted jobs are durable (``received``) and
kept here to dispatch again before anything new.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from bridge import metrics
from bridge.admit import Admit
from bridge.decode import Decoded
from bridge.dispatch import Dispatch
from bridge.dlq import DeadLetters
from bridge.errors import TRANSIENT

log = logging.getLogger(__name__)


@dataclass
class BatchOutcome:
    batch: Decoded
    admitted: bool = True  #: False: Postgres failed; nothing of the batch is durable
    failed: dict[tuple[str, int], int] = field(default_factory=dict)  #: first DLQ failure
    dispatched: int = 0
    error: str = ""


class Process:
    def __init__(self, admit: Admit, dead_letters: DeadLetters, dispatch: Dispatch,
                 topic: str) -> None:
        self.admit, self.dead_letters, self.dispatch = admit, dead_letters, dispatch
        self.topic = topic
        self.undispatched: list[tuple[str, int]] = []

    def __call__(self, batch: Decoded) -> BatchOutcome:
        out = BatchOutcome(batch)
        if batch.records:
            try:
                admitted = self.admit(batch)
            except TRANSIENT as exc:
                log.error("admit: Postgres failed (%s); the batch will be read again", exc)
                return BatchOutcome(batch, admitted=False, error=str(exc))
            metrics.DUPLICATES.labels(self.topic).inc(admitted.duplicates)
            self._dead_letters(admitted.rejections, out)
            self.undispatched.extend(admitted.new)
        out.dispatched = self._dispatch()
        return out

    def _dead_letters(self, rejections: list, out: BatchOutcome) -> None:  # type: ignore[type-arg]
        if not rejections:
            return
        for rejection, ok in zip(rejections, self.dead_letters.send(rejections)):
            record = rejection.record
            if ok:
                metrics.REJECTED.labels(rejection.error.code).inc()
            else:
                where = (record.topic, record.partition)
                out.failed[where] = min(out.failed.get(where, record.offset), record.offset)

    def _dispatch(self) -> int:
        jobs, self.undispatched = self.undispatched, []
        if not jobs:
            return 0
        try:
            self.dispatch(jobs)
        except TRANSIENT as exc:
            log.error("dispatch failed (%s); %d jobs stay received, retrying", exc, len(jobs))
            self.undispatched = jobs + self.undispatched
            return 0
        metrics.ADMITTED.labels(self.topic).inc(len(jobs))
        return len(jobs)

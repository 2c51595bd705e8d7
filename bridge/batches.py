"""The batch thread: steps 2-4 of one batch run while the loop polls and decodes the next.

Postgres and Redis waits release the GIL, so they overlap the loop's Kafka and JSON
work. Batches are processed one at a time, in order; at most ``depth`` wait their turn
(``submit`` blocks beyond that: backpressure on the loop). Outcomes come back in order.

Each Postgres reply hands the GIL back to this thread only when the loop's thread gives
it up: at most every ``sys.getswitchinterval()`` while that one runs Python (5 ms by
default), so a batch's few round trips would each wait up to that long with Postgres idle
(measured on 2 cores: an admission batch took 1.8x as long beside a busy thread). The
bridge runs with :data:`SWITCH_INTERVAL_S`.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable

from bridge.decode import Decoded
from bridge.process import BatchOutcome

_STOP = object()
#: Seconds a thread running Python keeps the GIL while another waits for it.
SWITCH_INTERVAL_S = 0.001


class BatchThread:
    def __init__(self, process: Callable[[Decoded], BatchOutcome], depth: int = 1) -> None:
        self._process = process
        self._todo: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._done: queue.Queue[BatchOutcome | BaseException] = queue.Queue()
        self._busy = 0
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self._run, name="bridge-batches", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> int:
        """Batches submitted whose outcome was not collected yet."""
        return self._busy

    def submit(self, batch: Decoded) -> None:
        self._busy += 1
        self._todo.put(batch)

    def outcomes(self, wait: bool = False) -> list[BatchOutcome]:
        """Finished outcomes in order; with ``wait``, until every submitted batch is done.

        An unexpected exception on the batch thread is raised here.
        """
        out: list[BatchOutcome] = []
        while self._busy:
            try:
                item = self._done.get(block=wait)
            except queue.Empty:
                break
            self._busy -= 1
            if isinstance(item, BaseException):
                raise item
            out.append(item)
        return out

    def close(self) -> None:
        self._todo.put(_STOP)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            batch = self._todo.get()
            if batch is _STOP:
                return
            try:
                self._done.put(self._process(batch))  # type: ignore[arg-type]
            except BaseException as exc:  # noqa: BLE001 - handed to the loop's thread
                self._done.put(exc)

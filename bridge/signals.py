"""SIGTERM/SIGINT: the first sets a flag the loop checks; a second exits at once.
SIGUSR1 writes every thread's stack to stderr (a bridge that seems stuck tells where)."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
from types import FrameType

log = logging.getLogger(__name__)

#: Exit code of a bridge stopped hard by a second signal.
EXIT_FORCED = 6


class Shutdown:
    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        faulthandler.register(signal.SIGUSR1, all_threads=True)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
        faulthandler.unregister(signal.SIGUSR1)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            os._exit(EXIT_FORCED)
        self.requested = True
        log.info("signal %s: finishing the batch, committing, leaving the group",
                 signal.Signals(signum).name)

"""One object per process and key, built on first use: clients and connection pools do
not survive ``fork()``, so a prefork child builds its own instead of reusing its
parent's."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """``get(key, build)``: the object this process built for ``key``, else ``build()``'s
    (objects of a parent process are dropped on the child's first call)."""

    def __init__(self) -> None:
        self._made: dict[tuple[int, Hashable], T] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        pid = os.getpid()
        with self._lock:
            if (pid, key) not in self._made:
                for stale in [k for k in self._made if k[0] != pid]:
                    del self._made[stale]
                self._made[(pid, key)] = build()
            return self._made[(pid, key)]

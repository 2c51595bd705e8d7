"""Admission URL checks, memoised where that is safe, for a few microseconds a job.

``pipeline.inputs.check_url`` resolves a local path with ``realpath`` (an ``lstat`` per
component: ~35 us here, a network round trip on NFS). At admission the check is an early
rejection; ``fetch_input`` checks the opened file itself again at stage time. So for a
plain path (or ``file://`` URL) the bridge checks its directory once (for ``ttl_s``) and
the last component lexically; anything unusual takes the full check. Callback URLs are
memoised whole (the same few receivers).
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable

from pipeline.jobs import UrlCheck
from pipeline.settings import Settings

#: A stand-in last component used to check a directory through the full check.
_PROBE = "sonic-admission-probe"


class Memo:
    """An LRU of check outcomes (None: allowed, else the error), each kept ``ttl_s``."""

    def __init__(self, size: int = 4096, ttl_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size, self.ttl_s, self.clock = size, ttl_s, clock
        self._items: OrderedDict[str, tuple[float, Exception | None]] = OrderedDict()

    def check(self, key: str, run: Callable[[], object]) -> None:
        now = self.clock()
        found = self._items.get(key)
        if found is None or found[0] < now:
            try:
                run()
                error: Exception | None = None
            except Exception as exc:  # noqa: BLE001 - kept and raised again below
                error = exc
            found = (now + self.ttl_s, error)
            self._items[key] = found
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        if found[1] is not None:
            raise found[1]


class InputChecks:
    """``check_url`` memoised per directory of a local path."""

    def __init__(self, check: UrlCheck, memo: Memo | None = None) -> None:
        self.check = check
        self.memo = memo or Memo()

    def __call__(self, url: str, settings: Settings) -> None:
        cut = url.rfind("/") + 1
        directory, name = url[:cut], url[cut:]
        local = url.startswith("/") or url.startswith("file:")
        if not local or not _plain(name) or "%" in directory or "\x00" in url:
            self.check(url, settings)
            return
        self.memo.check(directory, lambda: self.check(directory + _PROBE, settings))


class CallbackChecks:
    def __init__(self, check: UrlCheck, memo: Memo | None = None) -> None:
        self.check = check
        self.memo = memo or Memo()

    def __call__(self, url: str, settings: Settings) -> None:
        self.memo.check(url, lambda: self.check(url, settings))


#: A character that makes a last component more than a plain name (one regex scan: a
#: generator over the characters cost ~4 us a job).
_UNPLAIN = re.compile(r"[%?#\\]")


def _plain(name: str) -> bool:
    """A last path component that cannot move the path elsewhere lexically."""
    return name not in ("", ".", "..") and _UNPLAIN.search(name) is None

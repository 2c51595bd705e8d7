"""The invalid-ratio cap: stop loudly rather than drain a whole broken topic to the DLQ."""

from __future__ import annotations

from collections import deque

from pipeline.errors import PipelineError


class InvalidRatioExceeded(PipelineError):
    code = "bridge.invalid_ratio"


class InvalidRatio:
    """More than ``max_ratio`` invalid over the last ``window`` messages trips the cap.

    The share is judged once a tenth of the window (at least one message) was seen.
    """

    def __init__(self, max_ratio: float, window: int) -> None:
        self.max_ratio = max_ratio
        self.window: deque[bool] = deque(maxlen=window)
        self.invalid = 0
        self.min_samples = max(1, window // 10)

    def observe(self, invalid: list[bool]) -> None:
        """Record a batch's outcomes in order; raise before anything of it is acted on."""
        for bad in invalid:
            if len(self.window) == self.window.maxlen and self.window[0]:
                self.invalid -= 1
            self.window.append(bad)
            self.invalid += bad
            seen = len(self.window)
            if seen >= self.min_samples and self.invalid / seen > self.max_ratio:
                raise InvalidRatioExceeded(
                    f"{self.invalid} of the last {seen} messages were invalid "
                    f"(over {self.max_ratio:.0%}); stopping instead of draining the topic "
                    "to the DLQ: fix the producer, then restart the bridge")

"""The documented type and range of every numeric field of the job message.

Each :class:`Range` is the one source of truth for a field: the schema in
:mod:`pipeline.jobs` builds its constraint from it, and the rejection message quotes it.
A value outside its range is rejected at the door with ``message.out_of_range``; a value
of the wrong type (a string, ``true``/``false``, or for an integer field any number
written with a fraction or an exponent, such as ``25.0`` or ``1e9``) with
``message.wrong_type``. The README's job-message table lists the same ranges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field


@dataclass(frozen=True)
class Range:
    """``lo`` to ``hi`` inclusive (``lo`` excluded when ``lo_open``); ``integer`` or any number."""

    lo: float
    hi: float
    integer: bool
    lo_open: bool = False

    def describe(self) -> str:
        """``'an integer from 64 to 2048'``, ``'a number over 0 up to 4'``."""
        kind = "an integer" if self.integer else "a number"
        lo, hi = show_number(self.lo), show_number(self.hi)
        if self.hi == float("inf"):
            return f"{kind} over {lo}" if self.lo_open else f"{kind} of at least {lo}"
        return f"{kind} over {lo} up to {hi}" if self.lo_open else f"{kind} from {lo} to {hi}"

    def field(self, default: Any = None) -> Any:
        """A pydantic ``Field`` enforcing the range (the type is the annotation's)."""
        upper = {} if self.hi == float("inf") else {"le": self.hi}
        if self.lo_open:
            return Field(default, gt=self.lo, **upper)
        return Field(default, ge=self.lo, **upper)


def show_number(value: float) -> str:
    """``2048`` for 2048.0, ``0.5`` for 0.5: a bound or a setting as people write it."""
    return str(int(value)) if float(value).is_integer() else str(value)


#: ``config.min_resolution``: pixels of the crop's short side (Sonic's default 512). Above
#: 2048 one render allocates tens of GB.
MIN_RESOLUTION = Range(64, 2048, integer=True)
#: ``config.inference_steps``: diffusion steps (Sonic's default 25); GPU time grows with it.
INFERENCE_STEPS = Range(1, 100, integer=True)
#: ``config.dynamic_scale``: strength of the audio-driven motion (Sonic's default 1.0).
DYNAMIC_SCALE = Range(0, 4, integer=False, lo_open=True)
#: ``config.motion_scale``: strength of the head motion (default 1.0).
MOTION_SCALE = Range(0, 4, integer=False, lo_open=True)
#: ``config.expand_ratio``: margin added around the detected face (Sonic's default 0.5).
EXPAND_RATIO = Range(0, 2, integer=False)
#: ``config.seed``: the render's random seed, an unsigned 32-bit integer.
SEED = Range(0, 2**32 - 1, integer=True)
#: ``output.fps``: frames per second of the delivered video.
OUTPUT_FPS = Range(1, 60, integer=False)
#: ``priority``: 0 runs first (Celery on Redis), 9 last; default 5.
PRIORITY = Range(0, 9, integer=True)
PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 0, 9, 5
#: ``ttl_s``: seconds from the record's timestamp to the job's deadline; at most 30 days.
TTL_S = Range(0, 30 * 24 * 3600, integer=False, lo_open=True)
#: ``duration``: the audio length hint in seconds; its upper bound is the setting
#: ``SONIC_MAX_AUDIO_S`` (checked in :func:`pipeline.jobs.decode`), here only the lower.
DURATION_S = Range(0, float("inf"), integer=False)

#: The range of each numeric field, by its dotted path in the message.
RANGES: dict[str, Range] = {
    "config.min_resolution": MIN_RESOLUTION,
    "config.inference_steps": INFERENCE_STEPS,
    "config.dynamic_scale": DYNAMIC_SCALE,
    "config.motion_scale": MOTION_SCALE,
    "config.expand_ratio": EXPAND_RATIO,
    "config.seed": SEED,
    "output.fps": OUTPUT_FPS,
    "priority": PRIORITY,
    "ttl_s": TTL_S,
    "duration": DURATION_S,
}

"""Sonic's frame and size rules, shared by the media steps and the engines.

    16 kHz mono audio -> one key frame per 1280 samples (12.5 per second)
    -> 25 fps once interpolation puts one frame between each pair (2N-1 frames)
    output sides: the short side scaled to ``min_resolution``, both rounded to 64

Plain arithmetic: no numpy, OpenCV or torch, so anything in the pipeline may import it.
"""

from __future__ import annotations

#: Audio rate every engine consumes (Sonic's whisper features and frame rule assume it).
SAMPLE_RATE = 16_000
#: Samples per generated key frame: Sonic renders 12.5 key frames per second of 16 kHz.
SAMPLES_PER_KEY_FRAME = 1280
#: Output rate once key frames are doubled by interpolation.
FPS = 25


def key_frames(samples: int) -> int:
    """Key frames Sonic renders for ``samples`` of 16 kHz audio (12.5 per second)."""
    return samples // SAMPLES_PER_KEY_FRAME


def frame_count(samples: int) -> int:
    """Frames at 25 fps: the key frames with one interpolated between each pair (2N-1)."""
    n = key_frames(samples)
    return 2 * n - 1 if n > 0 else 0


def output_size(width: int, height: int, min_resolution: int) -> tuple[int, int]:
    """Scale so the short side is ``min_resolution``; both sides rounded to multiples of 64."""
    scale = min_resolution / min(width, height)
    return (max(64, round(width * scale / 64) * 64), max(64, round(height * scale / 64) * 64))

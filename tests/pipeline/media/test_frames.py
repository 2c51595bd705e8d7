"""Sonic's frame and size rules (pipeline/media/frames.py)."""

from __future__ import annotations

import pytest

from pipeline.media.frames import frame_count, key_frames, output_size


def test_frame_rule_follows_sonic() -> None:
    # 12.5 key frames per second of 16 kHz audio, doubled by interpolation: 2N - 1.
    assert key_frames(16_000) == 12
    assert frame_count(16_000) == 23
    assert frame_count(32_000) == 49  # 2 s of audio -> 1.96 s of video at 25 fps
    assert frame_count(1279) == 0 and frame_count(1280) == 1 and frame_count(2560) == 3


@pytest.mark.parametrize(("size", "min_res", "expected"), [
    ((300, 300), 512, (512, 512)),
    ((640, 480), 512, (704, 512)),
    ((480, 640), 256, (256, 320)),
    ((100, 100), 100, (128, 128)),
])
def test_sides_are_multiples_of_64(size: tuple[int, int], min_res: int,
                                   expected: tuple[int, int]) -> None:
    assert output_size(*size, min_res) == expected

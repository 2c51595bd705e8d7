from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.errors import ImageError
from pipeline.media.image import decode_image, prepare_image, square_crop_box
from tests.pipeline.media.helpers import PORTRAIT


@pytest.mark.parametrize("min_resolution", [128, 256, 512])
def test_the_portrait_is_cropped_square_around_the_face(tmp_path: Path,
                                                       min_resolution: int) -> None:
    crop = prepare_image(PORTRAIT, tmp_path / "crop.png", min_resolution=min_resolution,
                         expand_ratio=0.5)

    width, height = crop.size
    assert width % 64 == 0 and height % 64 == 0
    assert min(width, height) == min_resolution
    assert crop.image.dtype == np.uint8 and crop.image.shape == (height, width, 3)
    fx1, fy1, fx2, fy2 = crop.face_box
    cx1, cy1, cx2, cy2 = crop.crop_box
    assert cx1 <= fx1 < fx2 <= cx2 and cy1 <= fy1 < fy2 <= cy2
    assert cx2 - cx1 == cy2 - cy1
    written = decode_image(tmp_path / "crop.png")
    assert np.array_equal(written, crop.image)
    ix1, iy1, ix2, iy2 = crop.face_in_crop
    assert 0 <= ix1 < ix2 <= width and 0 <= iy1 < iy2 <= height


def test_square_box_stays_inside_the_image_near_an_edge() -> None:
    box = square_crop_box((10, 40, 110, 140), 0.5, width=400, height=300)

    x1, y1, x2, y2 = box
    assert x2 - x1 == y2 - y1
    assert x1 >= 0 and y1 >= 0 and x2 <= 400 and y2 <= 300


def test_an_image_without_a_face_is_rejected(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    gradient = np.dstack([ramp, ramp[::-1], np.full_like(ramp, 90)])
    cv2.imwrite(str(tmp_path / "gradient.png"), gradient)

    with pytest.raises(ImageError) as caught:
        prepare_image(tmp_path / "gradient.png", tmp_path / "crop.png")

    assert caught.value.code == "image.no_face"
    assert not (tmp_path / "crop.png").exists()


def test_garbage_is_undecodable(tmp_path: Path) -> None:
    (tmp_path / "face.jpg").write_bytes(b"\xff\xd8\xff garbage " * 50)

    with pytest.raises(ImageError) as caught:
        prepare_image(tmp_path / "face.jpg", None)
    assert caught.value.code == "image.undecodable"


def test_missing_file_is_undecodable(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as caught:
        decode_image(tmp_path / "nope.png")
    assert caught.value.code == "image.undecodable"

"""Portrait input: decode, find the largest face, crop square around it the way Sonic does.

Decoding (size checked from the header, orientation, transparency) is
:mod:`pipeline.media.imagefile`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.atomic import atomic_write
from pipeline.errors import ImageError
from pipeline.media.frames import output_size
from pipeline.media.imagefile import DEFAULT_MAX_PIXELS, decode_image

#: Box as (x1, y1, x2, y2) in pixels.
Box = tuple[int, int, int, int]
#: Detection runs on a copy whose long side is at most this (Haar is slow on big images).
DETECT_MAX_SIDE = 1024


@dataclass(frozen=True)
class FaceCrop:
    """The prepared portrait (RGB uint8) and where it came from."""

    image: np.ndarray
    face_box: Box  # the detected face, source pixels
    crop_box: Box  # the square cut out of the source, source pixels
    face_in_crop: Box  # the face box in the prepared image's pixels
    source_size: tuple[int, int]  # (width, height)
    path: Path | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path) if self.path else None, "size": list(self.size),
                "face_box": list(self.face_box), "crop_box": list(self.crop_box),
                "face_in_crop": list(self.face_in_crop), "source_size": list(self.source_size)}


@lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    cascades = Path(cv2.data.haarcascades)  # type: ignore[attr-defined]
    return cv2.CascadeClassifier(str(cascades / "haarcascade_frontalface_default.xml"))


def detect_face(rgb: np.ndarray) -> Box | None:
    """The largest frontal face as (x1, y1, x2, y2), or None."""
    height, width = rgb.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        gray = cv2.resize(gray, (round(width * scale), round(height * scale)),
                          interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(gray)
    smallest = max(24, min(gray.shape) // 12)
    faces = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                        minSize=(smallest, smallest))
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda f: int(f[2]) * int(f[3]))
    return (round(x / scale), round(y / scale), round((x + w) / scale), round((y + h) / scale))


def square_crop_box(face: Box, expand_ratio: float, width: int, height: int) -> Box:
    """Grow ``face`` by ``expand_ratio`` per side (clamped), then cut the largest square
    of the grown box, shifted toward the face centre (Sonic's ``process_bbox``)."""
    x1, y1, x2, y2 = face
    fw, fh = x2 - x1, y2 - y1
    ex1, ey1 = max(x1 - expand_ratio * fw, 0), max(y1 - expand_ratio * fh, 0)
    ex2, ey2 = min(x2 + expand_ratio * fw, width), min(y2 + expand_ratio * fh, height)
    ew, eh = ex2 - ex1, ey2 - ey1
    cx, cy = (ex1 + ex2) / 2, (ey1 + ey2) / 2
    slack = abs(eh - ew) / 2
    if ew < eh:
        cy += float(np.clip((y1 + y2) / 2 - cy, -slack, slack))
    else:
        cx += float(np.clip((x1 + x2) / 2 - cx, -slack, slack))
    half = min(ew, eh) / 2
    return (round(cx - half), round(cy - half), round(cx + half), round(cy + half))


def prepare_image(
    src: str | Path,
    dst_png: str | Path | None,
    *,
    min_resolution: int = 512,
    expand_ratio: float = 0.5,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FaceCrop:
    """Decode, detect, crop and scale the portrait; write it as PNG when ``dst_png`` is set.

    Raises :class:`ImageError` ``image.too_large`` (more than ``max_pixels`` declared),
    ``image.undecodable`` or ``image.no_face``.
    """
    rgb = decode_image(src, max_pixels=max_pixels)
    height, width = rgb.shape[:2]
    face = detect_face(rgb)
    if face is None:
        raise ImageError(f"no face found in {Path(src).name} ({width}x{height})",
                         code="image.no_face")
    box = square_crop_box(face, expand_ratio, width, height)
    cx1, cy1, cx2, cy2 = box
    crop = rgb[max(cy1, 0):cy2, max(cx1, 0):cx2]
    side = crop.shape[:2]
    out_w, out_h = output_size(side[1], side[0], min_resolution)
    interp = cv2.INTER_AREA if out_w < side[1] else cv2.INTER_LANCZOS4
    image = np.ascontiguousarray(cv2.resize(crop, (out_w, out_h), interpolation=interp))
    sx, sy = out_w / side[1], out_h / side[0]
    in_crop = (round((face[0] - cx1) * sx), round((face[1] - cy1) * sy),
               round((face[2] - cx1) * sx), round((face[3] - cy1) * sy))
    path = Path(dst_png) if dst_png is not None else None
    if path is not None:
        # Encoded in memory, written by Python: a full disk raises OSError(ENOSPC)
        # (resource.disk_full, retried) and leaves no partial file, where cv2.imwrite only
        # answers False.
        done, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not done:
            raise ImageError(f"cannot encode the crop of {Path(src).name} as PNG",
                             code="image.undecodable")
        atomic_write(path, lambda out: out.write(png.tobytes()))
    return FaceCrop(image, face, box, in_crop, (width, height), path)

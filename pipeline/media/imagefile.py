"""Decode an uploaded image safely with Pillow: size checked from the header first.

Pillow reads an image's size from its header before decoding anything, so an image
declaring more than ``max_pixels`` (``SONIC_MAX_IMAGE_PIXELS``) is refused with
``image.too_large`` at once, whatever its byte size (a 124 KB PNG may declare
32000 x 32000). Otherwise the first frame is decoded; EXIF orientation is applied;
16-bit and float samples are scaled to 8 bits; CMYK goes through its ICC profile; and
transparency (an alpha channel, a palette or colour-key transparency) is composited onto
:data:`BACKGROUND`, so whatever colour lies under transparent pixels never shows.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from pipeline.errors import ImageError

#: Formats an uploaded portrait may be in (Pillow's names; JPEG covers a phone camera's
#: multi-picture JPEG). Only these plugins ever parse the bytes.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")
#: Declared pixels (width x height) above which an image is refused without decoding.
#: Pillow's own limit (2 x ``Image.MAX_IMAGE_PIXELS``, about 179 MP) applies above it.
DEFAULT_MAX_PIXELS = 50_000_000
#: What transparent pixels become: a neutral mid grey.
BACKGROUND = (128, 128, 128)
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def decode_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The image's first frame as RGB uint8 (H, W, 3), upright, transparency composited.

    Raises :class:`ImageError` ``image.too_large`` when the header declares more than
    ``max_pixels`` (nothing is decoded then), ``image.undecodable`` for anything else
    that is not a readable image in one of :data:`FORMATS`.
    """
    name = Path(path).name
    try:
        with warnings.catch_warnings():
            # Pillow warns past its own limit; ours is checked right after.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path, formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image in a supported format "
                         f"({', '.join(FORMATS)})") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name} is too large to decode: {exc}", code="image.too_large",
                         limit_pixels=max_pixels) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read image {name}: {exc}") from None
    with opened as im:
        width, height = im.size
        if width * height > max_pixels:
            raise ImageError(f"{name} declares {width}x{height} pixels "
                             f"({width * height / 1e6:.1f} MP); the limit is "
                             f"{max_pixels / 1e6:g} MP (SONIC_MAX_IMAGE_PIXELS)",
                             code="image.too_large", size=[width, height],
                             limit_pixels=max_pixels)
        try:
            rgb = _to_rgb(_upright(im))
        except Exception as exc:  # noqa: BLE001 - any decoder failure on untrusted bytes
            raise ImageError(f"{name} ({im.format} {width}x{height}) cannot be decoded: "
                             f"{type(exc).__name__}: {exc}") from None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _upright(im: Image.Image) -> Image.Image:
    """The decoded first frame, turned per its EXIF orientation."""
    im.load()
    try:
        return ImageOps.exif_transpose(im) or im
    except (ValueError, TypeError, KeyError, SyntaxError):  # a malformed EXIF block
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB."""
    if im.mode in _WIDE_MODES:
        im = Image.fromarray(_eight_bit(np.asarray(im)), mode="L")
    if im.mode == "CMYK":
        return _cmyk_to_rgb(im)
    if "transparency" not in im.info and im.mode not in _ALPHA_MODES:
        return im.convert("RGB")
    rgba = im.convert("RGBA")
    ground = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(ground, rgba).convert("RGB")


def _eight_bit(values: np.ndarray) -> np.ndarray:
    """One channel of 16/32-bit integers (0..65535) or floats (0..1) as uint8."""
    if values.dtype.kind == "f":
        finite = np.nan_to_num(values.astype(np.float64))
        scale = 255.0 if finite.size == 0 or float(finite.max()) <= 1.0 else 1.0
        return np.clip(finite * scale, 0, 255).round().astype(np.uint8)
    return (np.clip(values.astype(np.int64), 0, 65535) // 257).astype(np.uint8)


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    """CMYK to sRGB through the embedded ICC profile when it is usable, else Pillow's
    plain conversion."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(im, profile, ImageCms.createProfile("sRGB"),
                                                  outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass
    return im.convert("RGB")

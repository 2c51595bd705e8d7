from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.errors import CODES, ImageError
from pipeline.media.image import decode_image, prepare_image, square_crop_box
from pipeline.media.imagefile import BACKGROUND
from tests.pipeline.media.builders import (BOMBS, FIELD, GREEN, cutout, green_share, png_bomb,
                                           portrait)
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


# --- images that declare more than they carry ----------------------------------------------


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_a_bomb_of_each_format_is_refused_from_its_header(tmp_path: Path, name: str) -> None:
    bomb = BOMBS[name](tmp_path / name)
    assert bomb.stat().st_size < 5_000_000

    started = time.monotonic()
    with pytest.raises(ImageError) as caught:
        prepare_image(bomb, tmp_path / "crop.png")

    assert caught.value.code == "image.too_large" and caught.value.code in CODES
    assert time.monotonic() - started < 1.0
    assert not (tmp_path / "crop.png").exists()


def test_the_field_png_bomb_is_refused_within_a_second() -> None:
    started = time.monotonic()
    with pytest.raises(ImageError) as caught:
        decode_image(FIELD / "c12_png_bomb.png")
    assert caught.value.code == "image.too_large"
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("side", [8000, 12000])
def test_our_cap_applies_below_pillows(tmp_path: Path, side: int) -> None:
    """64 and 144 MP: under Pillow's own limit, over SONIC_MAX_IMAGE_PIXELS."""
    bomb = png_bomb(tmp_path / "big.png", side, side)
    with pytest.raises(ImageError) as caught:
        decode_image(bomb)
    assert caught.value.code == "image.too_large"
    assert f"{side}x{side}" in caught.value.message
    assert "SONIC_MAX_IMAGE_PIXELS" in caught.value.message
    assert caught.value.detail["size"] == [side, side]


def test_the_cap_is_checked_before_any_pixel_is_decoded(tmp_path: Path) -> None:
    """A header over the cap with broken pixel data: too large, not undecodable."""
    data = bytearray(png_bomb(tmp_path / "b.png", 400, 300).read_bytes())
    data[-40:-20] = b"\xff" * 20  # corrupt the compressed rows
    (tmp_path / "b.png").write_bytes(bytes(data))
    with pytest.raises(ImageError) as small_cap:
        decode_image(tmp_path / "b.png", max_pixels=100_000)
    with pytest.raises(ImageError) as decoded:
        decode_image(tmp_path / "b.png", max_pixels=200_000)
    assert (small_cap.value.code, decoded.value.code) == ("image.too_large", "image.undecodable")


def test_a_large_real_photo_under_the_cap_works(tmp_path: Path) -> None:
    """24 MP (6000 x 4000 JPEG, a few MB): decoded, face found, in a few seconds."""
    big = portrait().resize((4000, 4000), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (6000, 4000), (200, 190, 180))
    canvas.paste(big, (1000, 0))
    canvas.save(tmp_path / "big.jpg", quality=90)

    started = time.monotonic()
    crop = prepare_image(tmp_path / "big.jpg", None, min_resolution=256)
    assert time.monotonic() - started < 20
    assert crop.source_size == (6000, 4000) and crop.size == (256, 256)
    with pytest.raises(ImageError) as caught:  # the same photo over a lower cap
        prepare_image(tmp_path / "big.jpg", None, max_pixels=20_000_000)
    assert caught.value.code == "image.too_large"


# --- transparency never shows what lies under it -------------------------------------------
def _green_index(image: Image.Image) -> Image.Image:
    """A palette image of the cut-out whose transparent areas use index 255, pure green."""
    paletted = image.convert("RGB").quantize(255)
    palette = (paletted.getpalette() or []) + [0] * 768
    paletted.putpalette(palette[:765] + list(GREEN))
    paletted.paste(255, mask=image.getchannel("A").point(lambda a: 255 if a < 128 else 0))
    return paletted


def _save_alpha(image: Image.Image, path: Path) -> Path:
    fmt = path.suffix.lstrip(".").upper().replace("JPG", "JPEG")
    if fmt == "GIF":  # palette with one transparent index, two frames
        paletted = _green_index(image)
        second = paletted.copy()
        second.paste(0, (150, 300, 250, 340))  # the mouth moves in the second frame
        paletted.save(path, save_all=True, append_images=[second], transparency=255, loop=0,
                      disposal=2)
        assert Image.open(path).n_frames == 2
    elif path.name.endswith(".la.png"):
        image.convert("LA").save(path)
    elif path.name.endswith(".p.png"):
        _green_index(image).save(path, transparency=255)
    elif fmt == "WEBP":
        image.save(path, lossless=True, exact=True)  # keep the green under alpha 0
    elif path.name.endswith(".16.png"):
        wide = (np.asarray(image).astype(np.uint16) * 257)[..., [2, 1, 0, 3]]
        cv2.imwrite(str(path), wide)  # 16-bit BGRA
    else:
        image.save(path)
    return path


@pytest.mark.parametrize("name", ["rgba.png", "la.la.png", "palette.p.png", "rgba.webp",
                                  "animated.gif", "rgba.16.png", "rgba.tif"])
def test_transparent_pixels_become_the_neutral_background(tmp_path: Path, name: str) -> None:
    src = _save_alpha(cutout(), tmp_path / name)
    assert green_share(np.asarray(Image.open(src).convert("RGB"))) > 0.1 or "la" in name

    rgb = decode_image(src)

    assert rgb.shape[2] == 3 and green_share(rgb) < 0.01
    assert (rgb[2, 2] == BACKGROUND).all()  # a corner: transparent in the cut-out
    crop = prepare_image(src, None, min_resolution=128)
    assert green_share(crop.image) < 0.01


def test_the_field_cutout_has_no_green_left(tmp_path: Path) -> None:
    crop = prepare_image(FIELD / "c07_alpha_cutout.png", tmp_path / "c.png", min_resolution=256)
    assert green_share(decode_image(FIELD / "c07_alpha_cutout.png")) < 0.01
    assert green_share(crop.image) < 0.01


# --- orientation, colour spaces and depths keep working ------------------------------------
@pytest.mark.parametrize("orientation, turn", [(3, Image.Transpose.ROTATE_180),
                                               (6, Image.Transpose.ROTATE_90),
                                               (8, Image.Transpose.ROTATE_270)])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int,
                                     turn: Image.Transpose) -> None:
    upright = portrait(320)
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright.transpose(turn).save(tmp_path / "turned.jpg", quality=95, exif=exif)

    rgb = decode_image(tmp_path / "turned.jpg")

    assert rgb.shape[:2] == (upright.height, upright.width)
    assert np.abs(rgb.astype(int) - np.asarray(upright, dtype=int)).mean() < 6
    assert prepare_image(tmp_path / "turned.jpg", None, min_resolution=128).face_box


def test_a_cmyk_jpeg_decodes_to_about_its_rgb_colours(tmp_path: Path) -> None:
    rgb = portrait(320)
    rgb.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"

    got = decode_image(tmp_path / "cmyk.jpg")

    assert np.abs(got.astype(int) - np.asarray(rgb, dtype=int)).mean() < 8
    opencv = cv2.cvtColor(cv2.imread(str(tmp_path / "cmyk.jpg")), cv2.COLOR_BGR2RGB)
    assert np.abs(got.astype(int) - opencv.astype(int)).mean() < 8  # as it decoded before
    assert prepare_image(tmp_path / "cmyk.jpg", None, min_resolution=128).face_box


@pytest.mark.parametrize("kind", ["gray16", "rgb16", "gray8", "palette", "bmp", "tiff",
                                  "webp", "gif", "mpo-like jpeg"])
def test_depths_and_formats_decode_to_8_bit_rgb(tmp_path: Path, kind: str) -> None:
    rgb = portrait(320)
    gray = np.asarray(rgb.convert("L"))
    path = tmp_path / "in"
    if kind == "gray16":
        cv2.imwrite(str(path.with_suffix(".png")), gray.astype(np.uint16) * 257)
    elif kind == "rgb16":
        cv2.imwrite(str(path.with_suffix(".png")),
                    np.asarray(rgb)[..., ::-1].astype(np.uint16) * 257)
    elif kind == "gray8":
        rgb.convert("L").save(path.with_suffix(".png"))
    elif kind == "palette":
        rgb.quantize(256).save(path.with_suffix(".png"))
    elif kind == "mpo-like jpeg":
        rgb.save(path.with_suffix(".jpg"), save_all=True, append_images=[rgb], format="MPO")
    else:
        ext = {"bmp": ".bmp", "tiff": ".tif", "webp": ".webp", "gif": ".gif"}[kind]
        rgb.save(path.with_suffix(ext), **({"quality": 95} if kind == "webp" else {}))
    src = next(tmp_path.glob("in.*"))

    got = decode_image(src)

    assert got.dtype == np.uint8 and got.shape == (rgb.height, rgb.width, 3)
    expected = np.dstack([gray] * 3) if kind.startswith("gray") else np.asarray(rgb)
    tolerance = 16 if kind in ("palette", "gif") else 6
    assert np.abs(got.astype(int) - expected.astype(int)).mean() < tolerance
    assert prepare_image(src, None, min_resolution=128).face_box


@pytest.mark.parametrize("kind", ["ppm", "ico", "svg", "truncated jpeg", "empty"])
def test_other_formats_and_broken_files_are_undecodable(tmp_path: Path, kind: str) -> None:
    face = portrait(256)
    path = tmp_path / "face.jpg"
    if kind == "ppm":
        face.save(path, "PPM")
    elif kind == "ico":
        face.save(path, "ICO")
    elif kind == "svg":
        path.write_text('<svg xmlns="http://www.w3.org/2000/svg"><image href="/etc/passwd"/></svg>')
    elif kind == "truncated jpeg":
        face.save(path, quality=95)
        path.write_bytes(path.read_bytes()[:4000])
    else:
        path.write_bytes(b"")

    with pytest.raises(ImageError) as caught:
        prepare_image(path, tmp_path / "crop.png")
    assert caught.value.code == "image.undecodable"
    assert not (tmp_path / "crop.png").exists()

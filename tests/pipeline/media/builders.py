"""Field-like inputs made at test time: image bombs, cut-out portraits, speech at chosen
levels and rates, and playlists that name other files."""

from __future__ import annotations

import os
import struct
import subprocess
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from tests.pipeline.media.helpers import PORTRAIT, speak, write_wav

GREEN = (0, 255, 0)
#: The field inputs (one example of each failing kind), in ``shared/`` beside the checkout.
FIELD = next((p for p in (Path(__file__).resolve().parents[4] / "shared" / "field-inputs",
                          Path("/work/shared/field-inputs")) if p.is_dir()),
             Path("/work/shared/field-inputs"))


# --- images -------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(path: Path, width: int = 32000, height: int = 32000) -> Path:
    """A small PNG declaring ``width`` x ``height`` RGB pixels: zlib-packed zero rows
    (a few MB of them), the rest missing. Decoding it in full would need width*height*3."""
    rows = zlib.compressobj(9)
    body = b"".join(rows.compress(b"\0" * (1 + width * 3)) for _ in range(200)) + rows.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b""))
    return path


def jpeg_bomb(path: Path, width: int = 60000, height: int = 60000) -> Path:
    """A real 64 x 64 JPEG whose frame header is patched to declare ``width`` x ``height``."""
    small = path.with_suffix(".small.jpg")
    Image.new("RGB", (64, 64), (90, 120, 150)).save(small, "JPEG")
    data = bytearray(small.read_bytes())
    small.unlink()
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def webp_bomb(path: Path) -> Path:
    """A real WebP whose extended header (VP8X) declares a 16384 x 16384 canvas."""
    Image.new("RGBA", (64, 64), (1, 2, 3, 255)).save(path, "WEBP", lossless=True, exact=True)
    data = bytearray(path.read_bytes())
    if data[12:16] != b"VP8X":  # make it an extended file: RIFF, VP8X, then the image
        vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x10\0\0\0" + b"\0" * 6
        data = data[:12] + vp8x + data[12:]
        data[4:8] = struct.pack("<I", len(data) - 8)
    side = (16384 - 1).to_bytes(3, "little")
    data[24:27], data[27:30] = side, side
    path.write_bytes(bytes(data))
    return path


def gif_bomb(path: Path) -> Path:
    """A GIF whose logical screen declares 65535 x 65535 with one tiny frame."""
    Image.new("P", (16, 16), 1).save(path, "GIF")
    data = bytearray(path.read_bytes())
    data[6:10] = struct.pack("<HH", 65535, 65535)
    path.write_bytes(bytes(data))
    return path


def tiff_bomb(path: Path) -> Path:
    """An uncompressed TIFF whose tags declare 50000 x 50000 with 64 x 64 of data."""
    Image.new("RGB", (64, 64), (10, 20, 30)).save(path, "TIFF")
    data = bytearray(path.read_bytes())
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[ifd:ifd + 2])
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack(order + "HH", data[entry:entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            fmt = "H" if kind == 3 else "I"
            data[entry + 8:entry + 8 + struct.calcsize(fmt)] = struct.pack(order + fmt, 50000)
    path.write_bytes(bytes(data))
    return path


def bmp_bomb(path: Path) -> Path:
    """A BMP whose header declares 40000 x 40000 with 64 x 64 of data."""
    Image.new("RGB", (64, 64), (10, 20, 30)).save(path, "BMP")
    data = bytearray(path.read_bytes())
    data[18:26] = struct.pack("<ii", 40000, 40000)
    path.write_bytes(bytes(data))
    return path


BOMBS: dict[str, Callable[[Path], Path]] = {
    "bomb.png": png_bomb, "bomb.jpg": jpeg_bomb, "bomb.webp": webp_bomb,
    "bomb.gif": gif_bomb, "bomb.tif": tiff_bomb, "bomb.bmp": bmp_bomb,
}


def portrait(size: int | None = None) -> Image.Image:
    """The bundled portrait (RGB), optionally scaled so its long side is ``size``."""
    image = Image.open(PORTRAIT).convert("RGB")
    if size is not None:
        image.thumbnail((size, size))
    return image


def cutout(size: int = 400) -> Image.Image:
    """The portrait as an RGBA cut-out: an oval of the face kept, everything around it
    transparent, with pure green stored under the transparent pixels."""
    face = portrait(size)
    width, height = face.size
    yy, xx = np.mgrid[0:height, 0:width]
    dx, dy = (xx - width / 2) / (width * 0.42), (yy - height * 0.45) / (height * 0.47)
    inside = dx ** 2 + dy ** 2 <= 1
    rgb = np.asarray(face).copy()
    rgb[~inside] = GREEN
    alpha = np.where(inside, 255, 0).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def green_share(rgb: np.ndarray) -> float:
    """Share of pixels that are (close to) pure green."""
    pixels = rgb.astype(np.int16)
    green = (pixels[..., 1] > 200) & (pixels[..., 0] < 80) & (pixels[..., 2] < 80)
    return float(green.mean())


# --- audio --------------------------------------------------------------------------------
def dbfs(samples: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(samples.astype(np.float64) ** 2))))


def speech_samples(workdir: Path, text: str = "Hello there, how are you today?",
                   rate: int = 16_000) -> np.ndarray:
    """espeak-ng speech at ``rate`` as float samples, peak normalised to -1 dBFS."""
    raw = speak(workdir / f"say-{abs(hash(text))}.wav", text)
    out = workdir / f"say-{abs(hash(text))}-{rate}.raw"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(raw), "-ac", "1", "-ar", str(rate),
                    "-f", "f32le", str(out)], check=True)
    samples = np.fromfile(out, dtype="<f4").astype(np.float64)
    return samples / np.abs(samples).max() * 10 ** (-1 / 20)


def at_level(samples: np.ndarray, level_dbfs: float) -> np.ndarray:
    """``samples`` scaled so their RMS over the active part (above 1 % of peak) is ``level``."""
    active = samples[np.abs(samples) > 0.01 * np.abs(samples).max()]
    return samples * 10 ** (level_dbfs / 20) / np.sqrt(np.mean(active ** 2))


def noise(seconds: float, level_dbfs: float, rate: int = 16_000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 10 ** (level_dbfs / 20), int(seconds * rate))


def hum(seconds: float, level_dbfs: float, hz: float = 50.0, rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.sqrt(2) * 10 ** (level_dbfs / 20) * np.sin(2 * np.pi * hz * t)


def clip(path: Path, *parts: np.ndarray, rate: int = 16_000) -> Path:
    """The parts one after the other, as a mono s16 WAV."""
    return write_wav(path, np.concatenate(parts), rate)


def encode(src: Path, dst: Path, *args: str) -> Path:
    """``ffmpeg -i src <args> dst``."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), *args, str(dst)], check=True)
    return dst


def surround(path: Path, speech: np.ndarray, rate: int = 48_000) -> Path:
    """A 5.1 AAC file with ``speech`` (at ``rate``) on the centre channel."""
    mono = write_wav(path.with_suffix(".mono.wav"), speech, rate)
    encode(mono, path, "-af", "pan=5.1|FL=0.1*c0|FR=0.1*c0|FC=c0",
           "-c:a", "aac", "-b:a", "192k")
    mono.unlink()
    return path


# --- playlists ----------------------------------------------------------------------------
def playlists(directory: Path, target: Path) -> dict[str, Path]:
    """Playlists naming ``target``, named as uploads would be. An unrestricted ffmpeg opens
    ``target`` for each but ``concat-lines.txt`` (a concat list without its header)."""
    hls = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{}\n#EXT-X-ENDLIST\n"
    shapes = {
        "list.m3u8": hls.format(target),
        "hls-named.mp3": hls.format(target),
        "file-url.m3u8": hls.format(target.as_uri()),
        "relative.m3u8": hls.format(target.name),
        # concat refuses absolute names by default ("safe"); a name beside it is read
        "ffconcat.wav": f"ffconcat version 1.0\nfile '{target.name}'\n",
        "concat-lines.txt": f"file '{target}'\nfile '{target}'\n",
    }
    out = {}
    for name, text in shapes.items():
        (directory / name).write_text(text)
        out[name] = directory / name
    return out


@contextmanager
def watched_fifo(path: Path) -> Iterator[Callable[[], bool]]:
    """A named pipe at ``path``; yields ``opened()``, true once anything opened it to read.

    A writer waits on the pipe in a thread; a reader opening it releases the writer,
    which closes at once (the reader sees end of file, so nothing hangs).
    """
    os.mkfifo(path)
    opened = threading.Event()
    stop = threading.Event()

    def writer() -> None:
        fd = os.open(path, os.O_WRONLY)  # blocks until someone opens the pipe to read
        if not stop.is_set():
            opened.set()
        os.close(fd)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        yield lambda: opened.wait(0.5)
    finally:
        stop.set()
        if thread.is_alive():  # nobody read it: open it ourselves to let the writer go
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            thread.join(timeout=5)
            os.close(fd)
        path.unlink(missing_ok=True)

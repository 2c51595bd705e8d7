"""Making records the Kafka client cannot decode, on the real broker.

Two ways: ``kcat`` produces a header key that is not UTF-8 (Python clients cannot), and
:func:`patch_batch` rewrites a batch in place in the broker's segment file (the broker
serves the file as it is): a header key, a flipped value byte (CRC mismatch), an unknown
codec or a malformed record, each with the CRC fixed or not.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from crc32c import crc32c

from pipeline.settings import Settings

BAD_KEY = b"k\xff"  #: not UTF-8


def kcat_produce(settings: Settings, topic: str, partition: int, value: bytes,
                 key: bytes = b"", header_key: bytes = BAD_KEY, codec: str | None = None,
                 header_value: bytes = b"v") -> None:
    """One record through kcat (librdkafka), with a header ``header_key=header_value``."""
    kcat = shutil.which("kcat")
    assert kcat, "kcat is not installed: `ops/stack.py install` (Debian package kcat)"
    argv = [kcat, "-P", "-b", settings.kafka_bootstrap, "-t", topic, "-p", str(partition),
            "-H", (header_key + b"=" + header_value).decode("utf-8", "surrogateescape")]
    if key:
        argv += ["-k", key.decode()]
    if codec:
        argv += ["-z", codec]
    subprocess.run(argv, input=value, check=True, timeout=60,
                   env={"PATH": "/usr/bin:/bin"}, capture_output=True)


def kcat_tombstone(settings: Settings, topic: str, partition: int) -> None:
    """A record with neither key nor value (kafka-python refuses to produce one)."""
    kcat = shutil.which("kcat")
    assert kcat, "kcat is not installed: `ops/stack.py install` (Debian package kcat)"
    subprocess.run([kcat, "-P", "-Z", "-K:", "-b", settings.kafka_bootstrap, "-t", topic,
                    "-p", str(partition)], input=b":\n", check=True, timeout=60,
                   capture_output=True)  # an empty key and value, sent as NULL (-Z)


def segment(settings: Settings, topic: str, partition: int) -> Path:
    return settings.state_dir / "kafka" / "data" / f"{topic}-{partition}" / \
        "00000000000000000000.log"


def patch_batch(path: Path, marker: bytes, change: Callable[[bytearray], None],
                fix_crc: bool, timeout_s: float = 10) -> None:
    """Apply ``change`` to the batch whose bytes hold ``marker``; fix its CRC or not."""
    deadline = time.monotonic() + timeout_s
    while True:  # the broker may not have written it yet
        data = bytearray(path.read_bytes()) if path.exists() else bytearray()
        start = _find(data, marker)
        if start is not None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert start is not None, f"no batch holding {marker!r} in {path}"
    (length,) = struct.unpack_from(">i", data, start + 8)
    batch = patched(bytes(data[start:start + 12 + length]), change, fix_crc)
    with path.open("r+b") as fh:
        fh.seek(start)
        fh.write(batch)


def patched(batch: bytes, change: Callable[[bytearray], None], fix_crc: bool) -> bytes:
    """One batch's bytes with ``change`` applied, its CRC-32C fixed or not."""
    out = bytearray(batch)
    change(out)
    if fix_crc:
        struct.pack_into(">I", out, 17, crc32c(bytes(out[21:])))
    return bytes(out)


def _find(data: bytearray, marker: bytes) -> int | None:
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">i", data, pos + 8)
        end = pos + 12 + length
        if marker in data[pos:end]:
            return pos
        pos = end
    return None


def replace(old: bytes, new: bytes) -> Callable[[bytearray], None]:
    """A same-length replacement inside the batch."""
    assert len(old) == len(new)

    def change(batch: bytearray) -> None:
        at = batch.find(old)
        assert at >= 0, old
        batch[at:at + len(old)] = new
    return change


def set_codec(codec_id: int) -> Callable[[bytearray], None]:
    def change(batch: bytearray) -> None:
        (attributes,) = struct.unpack_from(">h", batch, 21)
        struct.pack_into(">h", batch, 21, (attributes & ~0x07) | codec_id)
    return change


def bad_first_record_length(batch: bytearray) -> None:
    """Change the first record's length (the low bits of its zigzag varint's first byte)."""
    batch[61] = (batch[61] & 0x80) | ((batch[61] + 2) & 0x7F)

"""A job from an upload: check the two files, store them, and write the job message.

    checked = check_files(image_path, audio_path, settings)      # raises with a code
    refs = UploadStore(settings).refs(tenant, task_id, checked)  # where they will live
    message = job_message(task_id, tenant, refs, knobs, settings) # validated at the door
    UploadStore(settings).put(refs, checked)                      # into the object store

Checks, each with the code the stages would give later (failing early costs the uploader
nothing): a part over ``SONIC_MAX_INPUT_BYTES`` is ``input.too_large``; an image that
Pillow cannot read ``image.undecodable`` (``image.too_large`` past
``SONIC_MAX_IMAGE_PIXELS``, from its header); audio that ffprobe cannot read in a
single-file container ``audio.undecodable`` / ``input.unsupported_format``, longer than
``SONIC_MAX_AUDIO_S`` ``audio.too_long``. The message then passes the bridge's own door
(:func:`pipeline.jobs.decode`), so a knob out of range is ``message.out_of_range`` here too.

Where uploads live: with the ``s3`` backend, ``s3://{SONIC_UPLOAD_BUCKET}/uploads/
{tenant}/{task_id}/image.{ext}`` (the bucket must be in ``SONIC_INPUT_BUCKETS``); with
``local``, the same key under the first of ``SONIC_INPUT_ROOTS``, named by path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.errors import AudioError, ConfigError, InputError, InvalidMessage
from pipeline.inputs.urls import bucket_allowed
from pipeline.jobs import decode
from pipeline.media.ffmpeg import AUDIO_DEMUXERS, FFmpeg, duration_s, probe, stream
from pipeline.media.imagefile import FORMATS, decode_image
from pipeline.settings import Settings
from pipeline.storage import LocalStore, ObjectStore, get_store

#: Pillow format -> file extension of the stored image.
IMAGE_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "TIFF": "tiff",
             "BMP": "bmp"}
#: Render knobs a form may set (the rest of the message is the service's).
KNOBS = ("min_resolution", "inference_steps", "dynamic_scale", "motion_scale",
         "expand_ratio", "seed")


@dataclass(frozen=True)
class Checked:
    image: Path
    image_ext: str
    audio: Path
    audio_ext: str
    audio_s: float | None


def check_size(name: str, size: int, settings: Settings) -> None:
    """``input.too_large`` when ``size`` bytes of the ``name`` part pass the input cap."""
    if size > settings.max_input_bytes:
        raise InputError(f"the {name} part is over SONIC_MAX_INPUT_BYTES="
                         f"{settings.max_input_bytes} bytes", code="input.too_large")


def check_files(image: Path, audio: Path, settings: Settings) -> Checked:
    """Check both uploads (see the module doc); return what storing them needs."""
    for kind, path in (("image", image), ("audio", audio)):
        check_size(kind, path.stat().st_size, settings)
    decode_image(image, max_pixels=settings.max_image_pixels)
    with Image.open(image, formats=FORMATS) as im:
        image_ext = IMAGE_EXT.get(str(im.format), "img")
    info = probe(audio, ff=FFmpeg.from_settings(settings), error=AudioError,
                 code="audio.undecodable", formats=AUDIO_DEMUXERS, timeout=30.0)
    if stream(info, "audio") is None:
        raise AudioError("the audio part holds no audio stream", code="audio.undecodable")
    seconds = duration_s(info)
    if seconds is not None and seconds > settings.max_audio_s:
        raise AudioError(f"the audio is {seconds:.1f} s long, over SONIC_MAX_AUDIO_S="
                         f"{settings.max_audio_s:g}", code="audio.too_long")
    demuxer = str(info["format"].get("format_name", "audio")).split(",")[0]
    return Checked(image, image_ext, audio, _audio_ext(demuxer), seconds)


def _audio_ext(demuxer: str) -> str:
    return {"matroska": "mka", "mov": "m4a"}.get(demuxer, demuxer if demuxer.isalnum() else "audio")


class UploadStore:
    """The object store uploads go to, and the references the workers fetch them by."""

    def __init__(self, settings: Settings) -> None:
        self.backend = settings.storage_backend
        if self.backend == "s3":
            self.bucket = settings.upload_bucket
            if not bucket_allowed(self.bucket, "uploads/x", settings.input_buckets):
                raise ConfigError(f"SONIC_INPUT_BUCKETS must allow the upload bucket "
                                  f"{self.bucket!r} (SONIC_UPLOAD_BUCKET), or the workers "
                                  "could not fetch the uploads")
            self.store: ObjectStore = get_store(
                settings.model_copy(update={"s3_bucket": self.bucket}))
        else:
            if not settings.input_roots:
                raise ConfigError("SONIC_INPUT_ROOTS is empty: local uploads need a root")
            self.root = settings.input_roots[0]
            self.store = LocalStore(self.root)

    def ensure(self) -> None:
        """Create the upload bucket if missing (s3); the local root's directory otherwise."""
        if self.backend == "s3":
            self.store.ensure_bucket()  # type: ignore[attr-defined]
        else:
            self.root.mkdir(parents=True, exist_ok=True)

    def keys(self, tenant: str | None, task_id: str, checked: Checked) -> dict[str, str]:
        base = f"uploads/{tenant or '_'}/{task_id}"
        return {"image": f"{base}/image.{checked.image_ext}",
                "audio": f"{base}/audio.{checked.audio_ext}"}

    def ref(self, key: str) -> str:
        if self.backend == "s3":
            return f"s3://{self.bucket}/{key}"
        return str(self.root / key)

    def put(self, keys: dict[str, str], checked: Checked) -> None:
        self.store.put_file(checked.image, keys["image"], f"image/{checked.image_ext}")
        self.store.put_file(checked.audio, keys["audio"], "application/octet-stream")

    def remove(self, keys: dict[str, str]) -> None:
        for key in keys.values():
            self.store.delete(key)


def job_message(task_id: str, tenant: str | None, refs: dict[str, str],
                fields: dict[str, Any], settings: Settings) -> bytes:
    """The job message for Kafka, checked by the bridge's door (InvalidMessage raised).

    ``fields``: the form's optional values: the render knobs of :data:`KNOBS` and
    ``priority``, ``callback_url``, ``metadata`` (a JSON object), ``engine``.
    """
    config = {k: fields[k] for k in KNOBS if fields.get(k) is not None}
    message: dict[str, Any] = {"task_id": task_id, "image_url": refs["image"],
                               "audio_url": refs["audio"], "config": config}
    if tenant is not None:
        message["tenant"] = tenant
    for name in ("priority", "callback_url", "engine", "metadata"):
        if fields.get(name) is not None:
            message[name] = fields[name]
    value = json.dumps(message).encode()
    decode(value, settings)
    return value


def parse_metadata(raw: str | None) -> dict[str, Any] | None:
    if raw is None or not raw.strip():
        return None
    try:
        found = json.loads(raw)
    except ValueError:
        found = None
    if not isinstance(found, dict):
        raise InvalidMessage("field 'metadata' must be a JSON object", code="message.wrong_type")
    return found

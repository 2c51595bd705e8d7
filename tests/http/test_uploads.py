"""Bad uploads are refused with the project's codes before anything reaches Kafka."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from pipeline.errors import CODES
from tests.support.http_stack import MAX_INPUT_BYTES, HttpStack

pytestmark = [pytest.mark.integration]


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, "PNG")
    return out.getvalue()


def post(http_stack: HttpStack, files: dict[str, tuple[str, bytes]],
         data: dict[str, str] | None = None) -> httpx.Response:
    with http_stack.client("acme") as client:
        return client.post("/v1/tasks", data=data or {},
                           files={name: (fname, body) for name, (fname, body) in files.items()})


@pytest.fixture(scope="module")
def media(http_stack: HttpStack) -> dict[str, bytes]:
    return {"jpg": http_stack.portrait.read_bytes(), "wav": http_stack.speech.read_bytes()}


def refused(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code, answer.text
    assert code in CODES


def test_an_image_that_is_not_one_is_image_undecodable(http_stack: HttpStack,
                                                       media: dict[str, bytes]) -> None:
    for name, body in [("notes.txt", b"just some text\n"), ("face.jpg", media["jpg"][:200]),
                       ("voice.jpg", media["wav"]), ("empty.png", b""),
                       ("fake.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)]:
        answer = post(http_stack, {"image": (name, body), "audio": ("a.wav", media["wav"])})
        refused(answer, 422, "image.undecodable")


def test_an_image_declaring_too_many_pixels_is_refused_from_its_header(
        http_stack: HttpStack, media: dict[str, bytes]) -> None:
    for width, height in [(8000, 8000), (60000, 1000)]:
        answer = post(http_stack, {"image": ("big.png", _png(width, height)),
                                   "audio": ("a.wav", media["wav"])})
        refused(answer, 413, "image.too_large")


def test_audio_that_is_not_audio_is_refused(http_stack: HttpStack,
                                            media: dict[str, bytes]) -> None:
    cases = [("notes.txt", b"hello, not audio at all\n", "audio.undecodable"),
             ("face.wav", media["jpg"], "input.unsupported_format"),
             ("list.m3u8", b"#EXTM3U\n#EXTINF:1,\n/etc/passwd\n", "audio.undecodable"),
             ("empty.wav", b"", "audio.undecodable")]
    for name, body, code in cases:
        answer = post(http_stack, {"image": ("face.jpg", media["jpg"]), "audio": (name, body)})
        refused(answer, 400 if code.startswith("input.") else 422, code)


def test_a_part_over_the_cap_is_input_too_large(http_stack: HttpStack,
                                                media: dict[str, bytes]) -> None:
    big = media["jpg"] + b"\0" * (MAX_INPUT_BYTES + 1 - len(media["jpg"]))
    for files in [{"image": ("face.jpg", big), "audio": ("a.wav", media["wav"])},
                  {"image": ("face.jpg", media["jpg"]), "audio": ("a.wav", big)}]:
        refused(post(http_stack, files), 413, "input.too_large")


def test_a_body_over_the_cap_is_refused_before_it_is_read(http_stack: HttpStack) -> None:
    too_much = 2 * MAX_INPUT_BYTES + 2 * 1024 * 1024

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it comes
        yield (b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
               b"Content-Type: image/jpeg\r\n\r\n")
        sent = 0
        while sent <= too_much:
            yield b"\0" * 65536
            sent += 65536

    with http_stack.client("acme") as client:
        declared = client.post("/v1/tasks", content=b"x" * too_much,
                               headers={"Content-Type": "multipart/form-data; boundary=b"})
        streamed = client.post("/v1/tasks", content=chunks(),
                               headers={"Content-Type": "multipart/form-data; boundary=b"})
    refused(declared, 413, "input.too_large")
    refused(streamed, 413, "input.too_large")


def test_a_missing_part_is_message_missing_field(http_stack: HttpStack,
                                                 media: dict[str, bytes]) -> None:
    for files in [{"audio": ("a.wav", media["wav"])}, {"image": ("f.jpg", media["jpg"])}, {}]:
        answer = post(http_stack, files, data={"seed": "1"})
        refused(answer, 400, "message.missing_field")
    with http_stack.client("acme") as client:  # a text field where a file belongs
        answer = client.post("/v1/tasks", data={"image": "face.jpg", "audio": "a.wav"})
    assert answer.status_code == 400 and answer.json()["error"]["code"] in (
        "message.missing_field", "message.wrong_type")


def test_knobs_and_fields_pass_the_bridge_door(http_stack: HttpStack,
                                               media: dict[str, bytes]) -> None:
    files = {"image": ("face.jpg", media["jpg"]), "audio": ("a.wav", media["wav"])}
    for data, code in [({"min_resolution": "5000"}, "message.out_of_range"),
                       ({"inference_steps": "0"}, "message.out_of_range"),
                       ({"dynamic_scale": "9"}, "message.out_of_range"),
                       ({"priority": "12"}, "message.out_of_range"),
                       ({"inference_steps": "many"}, "message.wrong_type"),
                       ({"metadata": "[1, 2]"}, "message.wrong_type"),
                       ({"metadata": "{not json"}, "message.wrong_type"),
                       ({"callback_url": "ftp://example.com/x"}, "input.forbidden_url")]:
        refused(post(http_stack, files, data), 400, code)


def test_refused_uploads_leave_nothing_behind(http_stack: HttpStack) -> None:
    """Every object in the upload bucket belongs to a job that was accepted."""
    keys = http_stack.objects("sonic-http-uploads")
    with http_stack.client("*") as operator:
        for task_id in {key.split("/")[2] for key in keys}:
            assert operator.get(f"/v1/tasks/{task_id}").status_code == 200, task_id

"""``sonic-pipeline render`` driven as an operator would: a subprocess, local files, no
Kafka, Redis or PostgreSQL. Success writes an H.264/AAC MP4 as long as the speech; every
kind of bad input ends with one line naming its code, exit 1, and no file written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import CODES, InvalidMessage
from pipeline.jobs import decode
from pipeline.settings import load
from pipeline.stages.local import local_settings
from tests.pipeline.media.helpers import PORTRAIT, speak

BIN = Path(sys.executable).parent / "sonic-pipeline"
KNOBS = ["--min-resolution", "128", "--inference-steps", "2", "--seed", "3"]


def render(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SONIC_")}
    clean.update(SONIC_STATE_DIR=str(cwd / "state"), **env)
    return subprocess.run([str(BIN), "render", *argv], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=clean)


def ffprobe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of",
                          "json", str(path)], capture_output=True, check=True, text=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The operator's own files, outside any configured input root."""
    import cv2

    home = tmp_path_factory.mktemp("operator")
    shutil.copy(PORTRAIT, home / "face.jpg")
    speak(home / "line.wav", "Hello there. This is a short line.")
    ramp = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    cv2.imwrite(str(home / "wall.png"), np.dstack([ramp, ramp, ramp]))
    (home / "notes.txt").write_text("not an image\n" * 20)
    (home / "noise.mp3").write_bytes(b"ID3 this is not an mp3 at all" * 50)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "anullsrc=r=16000:cl=mono", "-t", "3", str(home / "quiet.wav")], check=True)
    (home / "folder.wav").mkdir()
    return home


def test_a_render_writes_an_h264_aac_mp4_as_long_as_the_speech(media: Path,
                                                               tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    # Relative paths, from the operator's own directory.
    proc = render("--image", "face.jpg", "--audio", "line.wav", "-o", str(tmp_path / "o.mp4"),
                  "--work-dir", str(work), "--dynamic-scale", "1.2", *KNOBS, cwd=media)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["output"] == str(tmp_path / "o.mp4") and summary["engine"] == "builtin"
    assert set(summary["stages_s"]) == {"preprocess", "gpu", "encode"}
    info = ffprobe(tmp_path / "o.mp4")
    kinds = {s["codec_type"]: s for s in info["streams"]}
    assert kinds["video"]["codec_name"] == "h264" and kinds["audio"]["codec_name"] == "aac"
    assert (kinds["video"]["width"], kinds["video"]["height"]) == (128, 128)
    assert kinds["video"]["r_frame_rate"] == "25/1"
    speech = float(ffprobe(media / "line.wav")["format"]["duration"])
    assert abs(float(info["format"]["duration"]) - speech) <= 0.1
    assert summary["frames"] == int(kinds["video"]["nb_frames"])
    assert list(work.iterdir()) == []  # the stages' work dir is gone


#: Bad input of each kind (several of each): the arguments, the code.
BAD = [
    (["--inference-steps", "0"], "message.out_of_range"),
    (["--min-resolution", "4096"], "message.out_of_range"),
    (["--dynamic-scale", "0"], "message.out_of_range"),
    (["--seed", "-1"], "message.out_of_range"),
    (["--expand-ratio", "2.5"], "message.out_of_range"),
    (["--seed", "abc"], "message.wrong_type"),
    (["--inference-steps", "2.5"], "message.wrong_type"),
    (["--motion-scale", "true"], "message.wrong_type"),
    (["--image", "wall.png"], "image.no_face"),
    (["--image", "notes.txt"], "image.undecodable"),
    (["--image", "line.wav"], "image.undecodable"),
    (["--audio", "noise.mp3"], "audio.undecodable"),
    (["--audio", "face.jpg"], "input.unsupported_format"),
    (["--audio", "quiet.wav"], "audio.silent"),
    (["--audio", "http://10.1.2.3/a.wav"], "input.forbidden_url"),
    (["--image", "s3://somebucket/face.jpg"], "input.forbidden_url"),
    (["--engine", "sonic"], "engine.unavailable"),
    (["--engine", "nope"], "message.out_of_range"),  # the door: no worker knows it
    (["--image", "missing.jpg"], "input.not_found"),
    (["--audio", "missing.wav"], "input.not_found"),
    (["--audio", "folder.wav"], "input.not_found"),
    (["--image", "file:///nonexistent-dir/face.jpg"], "input.not_found"),
]


@pytest.mark.parametrize("args,code", BAD, ids=[f"{c}-{i}" for i, (_, c) in enumerate(BAD)])
def test_bad_input_is_one_line_with_its_code_and_exit_1(media: Path, tmp_path: Path,
                                                        args: list[str], code: str) -> None:
    given = dict(zip(args[::2], args[1::2]))
    argv = ["--image", given.pop("--image", "face.jpg"), "--audio",
            given.pop("--audio", "line.wav"), "-o", str(tmp_path / "o.mp4")]
    knobs = dict(zip(KNOBS[::2], KNOBS[1::2]), **given)
    proc = render(*argv, *[x for kv in knobs.items() for x in kv], cwd=media)
    assert proc.returncode == 1, proc.stderr
    line, = [x for x in proc.stderr.splitlines() if x.startswith("sonic-pipeline:")]
    assert line.startswith(f"sonic-pipeline: {code}: "), proc.stderr
    assert code in CODES and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.mp4").exists() and proc.stdout == ""


def test_a_missing_argument_is_a_usage_error_exit_2(
        media: Path, tmp_path: Path) -> None:
    proc = render("--image", "face.jpg", "-o", str(tmp_path / "o.mp4"), cwd=media)
    assert proc.returncode == 2 and "--audio" in proc.stderr


def test_only_this_run_reads_the_operators_files(media: Path, tmp_path: Path) -> None:
    """The roots of a run are its files' directories; the configured settings (every other
    process's) still refuse the same file."""
    settings = load()
    run, refs = local_settings(settings, [str(media / "face.jpg"), "http://example.com/a.wav"],
                               tmp_path)
    assert run.input_roots == [media.resolve()] and refs[1] == "http://example.com/a.wav"
    assert settings.input_roots == load().input_roots and media.resolve() not in \
        settings.input_roots
    message = {"task_id": "t1", "image_url": str(media / "face.jpg"),
               "audio_url": str(media / "line.wav")}
    with pytest.raises(InvalidMessage) as refused:
        decode(json.dumps(message).encode(), settings)
    assert refused.value.code == "input.forbidden_url"
    decode(json.dumps(message).encode(), run)  # admitted for this run only

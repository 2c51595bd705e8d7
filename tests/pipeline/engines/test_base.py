from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.engines import ENGINES, get_engine, loaded_engines, reset_engines
from pipeline.engines.base import RenderRequest, RenderResult, check_stop
from pipeline.errors import Cancelled, EngineError
from pipeline.settings import load


def test_stop_check_raises_with_the_right_code() -> None:
    check_stop(lambda: False)
    check_stop(lambda: None)
    with pytest.raises(Cancelled) as cancelled:
        check_stop(lambda: True)
    with pytest.raises(Cancelled) as deadline:
        check_stop(lambda: "task.deadline")
    assert cancelled.value.code == "task.cancelled"
    assert deadline.value.code == "task.deadline"


def test_request_and_result_round_trip_through_json_types(tmp_path: Path) -> None:
    job = RenderRequest(tmp_path / "i.png", tmp_path / "a.wav", tmp_path, min_resolution=256,
                        seed=7, face_box=(1, 2, 3, 4))
    data = job.as_dict()
    assert RenderRequest.from_dict({**data, "extra": 1}) == job
    assert all(isinstance(v, (str, int, float, list, type(None))) for v in data.values())
    result = RenderResult("builtin", 64, 64, 9, frames_path=tmp_path / "f.rgb")
    assert RenderResult.from_dict(result.as_dict()) == result


def test_unknown_engine_is_unavailable() -> None:
    with pytest.raises(EngineError) as caught:
        get_engine("nope", load())
    assert caught.value.code == "engine.unavailable"
    assert "builtin" in caught.value.message


def test_the_registry_keeps_one_warm_engine_per_name(tmp_path: Path) -> None:
    reset_engines()
    settings = load(device="cpu", state_dir=tmp_path)
    first = get_engine("builtin", settings)
    assert get_engine(None, settings) is first  # default_engine is builtin
    assert loaded_engines() == ["builtin"]
    reset_engines()
    assert set(ENGINES) == {"builtin", "sonic", "remote"}


def test_light_modules_do_not_import_torch() -> None:
    modules = ["pipeline.engines", "pipeline.engines.base", "pipeline.engines.sonic",
               "pipeline.media.ffmpeg", "pipeline.media.audio", "pipeline.media.image",
               "pipeline.media.encode"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "False"

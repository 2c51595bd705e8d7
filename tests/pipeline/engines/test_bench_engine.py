"""The ``bench`` engine exists only while SONIC_BENCH_ENGINE is on; it holds the stage for
its set time, stops when asked, and hands over one frame the encode stage can read."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.engines import ENGINES, RenderRequest, get_engine, reset_engines
from pipeline.errors import Cancelled, EngineError
from pipeline.settings import load


@pytest.fixture(autouse=True)
def fresh() -> None:
    reset_engines()
    yield
    reset_engines()


@pytest.mark.parametrize("overrides", [{}, {"bench_engine": False},
                                       {"bench_engine": False, "bench_engine_sleep_s": 1}])
def test_off_it_is_an_unknown_engine(overrides: dict) -> None:
    with pytest.raises(EngineError) as err:
        get_engine("bench", load(**overrides))
    assert err.value.code == "engine.unavailable" and "bench" not in ENGINES


def _job(tmp_path: Path) -> RenderRequest:
    return RenderRequest(tmp_path / "face.png", tmp_path / "audio.wav", tmp_path / "render")


@pytest.mark.parametrize("sleep_s", [0.0, 0.3])
def test_on_it_holds_for_its_time_and_hands_over_one_frame(tmp_path: Path,
                                                           sleep_s: float) -> None:
    engine = get_engine("bench", load(bench_engine=True, bench_engine_sleep_s=sleep_s))
    started = time.monotonic()
    result = engine.render(_job(tmp_path), lambda _: None, lambda: False)
    took = time.monotonic() - started
    assert sleep_s <= took < sleep_s + 0.25
    assert result.frames == 1 and result.frames_path is not None
    assert result.frames_path.stat().st_size == result.width * result.height * 3


@pytest.mark.parametrize("verdict,code", [(True, "task.cancelled"),
                                          ("task.deadline", "task.deadline")])
def test_it_stops_when_asked(tmp_path: Path, verdict: object, code: str) -> None:
    engine = get_engine("bench", load(bench_engine=True, bench_engine_sleep_s=30))
    started = time.monotonic()
    asked = lambda: verdict if time.monotonic() - started > 0.2 else False  # noqa: E731
    with pytest.raises(Cancelled) as err:
        engine.render(_job(tmp_path), lambda _: None, asked)
    assert err.value.code == code and time.monotonic() - started < 1
    assert not (tmp_path / "render").exists() or not list((tmp_path / "render").iterdir())


@pytest.mark.parametrize("sleep_s,step_s,steps", [(0.0, 0.05, 4), (0.1, 0.02, 10),
                                                  (0.0, 0.0, 25), (0.2, 0.0, 40)])
def test_each_job_adds_its_steps_time(tmp_path: Path, sleep_s: float, step_s: float,
                                      steps: int) -> None:
    engine = get_engine("bench", load(bench_engine=True, bench_engine_sleep_s=sleep_s,
                                      bench_engine_step_s=step_s))
    job = RenderRequest(tmp_path / "face.png", tmp_path / "audio.wav", tmp_path / "render",
                        inference_steps=steps)
    hold = sleep_s + step_s * steps
    assert engine.hold_s(steps) == pytest.approx(hold)
    started = time.monotonic()
    result = engine.render(job, lambda _: None, lambda: False)
    took = time.monotonic() - started
    assert hold <= took < hold + 0.25 and result.frames == 1

"""Engine registry: one loaded engine per name per process, kept warm between jobs.

Engines are imported by name only when first asked for, so importing this package
never imports torch (the bridge and the cpu workers may import it safely).
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from pipeline.engines.base import Engine, RenderRequest, RenderResult
from pipeline.errors import EngineError

__all__ = ["ENGINES", "Engine", "RenderRequest", "RenderResult", "get_engine", "loaded_engines",
           "reset_engines"]

#: Engine name -> "module:Class", imported on first use.
ENGINES: dict[str, str] = {
    "builtin": "pipeline.engines.builtin:BuiltinEngine",
    "sonic": "pipeline.engines.sonic:SonicEngine",
    # An HTTP inference service through the shared key pool (pipeline/engines/remote.py).
    "remote": "pipeline.engines.remote:RemoteEngine",
}
#: Engines known only while ``SONIC_BENCH_ENGINE`` is on (benchmarks; pipeline/engines/bench.py).
BENCH_ENGINES: dict[str, str] = {"bench": "pipeline.engines.bench:BenchEngine"}

_loaded: dict[str, Engine] = {}
_lock = threading.Lock()


def get_engine(name: str | None, settings: Any) -> Engine:
    """The loaded engine ``name`` (default: ``settings.default_engine``), loading it once.

    Unknown names and engines whose code or weights are missing raise
    ``EngineError`` with code ``engine.unavailable``. A failed load is not cached.
    """
    name = name or settings.default_engine
    with _lock:
        engine = _loaded.get(name)
        if engine is not None:
            return engine
        target = ENGINES.get(name)
        if target is None and getattr(settings, "bench_engine", False):
            target = BENCH_ENGINES.get(name)
        if target is None:
            raise EngineError(f"unknown engine {name!r}; known: {', '.join(sorted(ENGINES))}",
                              code="engine.unavailable")
        module_name, class_name = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise EngineError(f"engine {name!r} cannot be imported: {exc}",
                              code="engine.unavailable") from exc
        engine_class: type[Engine] = getattr(module, class_name)
        engine = engine_class()
        engine.load(settings)
        _loaded[name] = engine
        return engine


def loaded_engines() -> list[str]:
    """Names of the engines loaded in this process."""
    with _lock:
        return sorted(_loaded)


def reset_engines() -> None:
    """Forget the loaded engines (tests; a worker never needs this)."""
    with _lock:
        _loaded.clear()

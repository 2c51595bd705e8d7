"""Only the gpu worker may load torch: the bridge and the Celery app must not."""

from __future__ import annotations

import subprocess
import sys

LIGHT_MODULES = ["pipeline.celery", "pipeline.cli", "pipeline.commands", "tasks.health",
                 "pipeline.state.models", "pipeline.celery_config"]


def _after_importing(modules: list[str], expression: str) -> str:
    """Import ``modules`` in a fresh interpreter; what ``expression`` then prints."""
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print({expression})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_light_modules_do_not_import_torch() -> None:
    heavy = "','.join(sorted(m for m in ('torch', 'cv2') if m in sys.modules))"
    assert _after_importing(LIGHT_MODULES, heavy).strip() == ""


def test_the_bridge_and_the_task_modules_do_not_import_torch() -> None:
    """torch is loaded by the gpu worker's child at start (``worker_process_init``), never
    by importing the bridge or any task module (the cpu and io pools import them all)."""
    modules = ["bridge.main", "bridge.__main__", "tasks.preprocess", "tasks.inference",
               "tasks.encode", "tasks.upload", "tasks.callback", "pipeline.worker_hooks"]
    out = _after_importing(modules, "'torch' in sys.modules, 'bridge.main' in sys.modules")
    assert out.split() == ["False", "True"]

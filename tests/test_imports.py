"""Only the gpu worker may load torch: the bridge and the Celery app must not."""

from __future__ import annotations

import subprocess
import sys

LIGHT_MODULES = ["pipeline.celery", "pipeline.cli", "pipeline.commands", "tasks.health",
                 "pipeline.state.models", "pipeline.celery_config"]


def test_light_modules_do_not_import_torch() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {LIGHT_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = sorted(m for m in ('torch', 'cv2') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_the_bridge_and_the_task_modules_do_not_import_torch() -> None:
    """torch is loaded by the gpu worker's child at start (``worker_process_init``), never
    by importing the bridge or any task module (the cpu and io pools import them all)."""
    modules = ["bridge.main", "bridge.__main__", "tasks.preprocess", "tasks.inference",
               "tasks.encode", "tasks.upload", "tasks.callback", "pipeline.worker_hooks"]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print('torch' in sys.modules, 'bridge.main' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]

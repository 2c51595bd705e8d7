"""promtool, Prometheus' rule checker, built from its Go module for the alert rules' tests.

    .venv/bin/python ops/prometheus/promtool.py install    # prints the binary's path
    .venv/bin/python ops/prometheus/promtool.py test       # check and unit-test alerts.yml

``install`` builds the pinned ``promtool`` with the Go toolchain (as ``ops/s3.py`` builds
MinIO) into ``<state>/bin/promtool-<version>/`` once: about fifteen minutes on two busy
cores the first time (``make promtool``; ``make test`` does it first), nothing after.
``test`` runs
``promtool check rules alerts.yml`` and ``promtool test rules alerts_test.yml``. Errors are
one line naming the fix, exit status 1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if sys.path and Path(sys.path[0]).resolve() == ROOT / "ops" / "prometheus":
    sys.path[0] = str(ROOT)  # run as a script: import from the repo root

from ops.s3 import find_go  # noqa: E402
from ops.services.proc import StackError  # noqa: E402
from pipeline.settings import load  # noqa: E402

#: promtool's package and the exact Prometheus module version built (v0.316.0 is
#: Prometheus 3.16.0: the module tags v3.X.Y as v0.30X.Y / v0.3XX.Y).
PROMTOOL_PACKAGE = "github.com/prometheus/prometheus/cmd/promtool"
PROMETHEUS_VERSION = "v0.316.0"
RULES_DIR = Path(__file__).resolve().parent


def install_promtool(bin_dir: Path) -> Path:
    """The promtool binary of :data:`PROMETHEUS_VERSION`, built under ``bin_dir`` if missing.
    Raises StackError when Go is missing or the build fails."""
    local = bin_dir / f"promtool-{PROMETHEUS_VERSION}" / "promtool"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(local.parent), "GOFLAGS": "-buildvcs=false",
           "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    argv = [find_go(), "install", f"{PROMTOOL_PACKAGE}@{PROMETHEUS_VERSION}"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    if result.returncode != 0 or not local.is_file():
        lines = [ln for ln in (result.stderr or result.stdout).splitlines() if ln.strip()]
        raise StackError("promtool", f"go install {PROMTOOL_PACKAGE}@{PROMETHEUS_VERSION} "
                         f"failed (exit {result.returncode}): "
                         f"{(lines or ['(no output)'])[-1][:300]}")
    return local


def run_rule_tests(promtool: Path) -> list[subprocess.CompletedProcess[str]]:
    """``promtool check rules`` then ``promtool test rules`` in this directory."""
    return [subprocess.run([str(promtool), *argv], cwd=RULES_DIR, capture_output=True,
                           text=True)
            for argv in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["install", "test"])
    args = parser.parse_args(argv)
    try:
        promtool = install_promtool(load().state_dir / "bin")
    except StackError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.command == "install":
        print(promtool)
        return 0
    failed = 0
    for result in run_rule_tests(promtool):
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        failed |= result.returncode
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

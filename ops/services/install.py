"""The install step: Debian packages the stack needs, and the Kafka jars from Maven.

Both are skipped when already present, so ``up`` runs this every time at no cost.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from .kafka import OPS
from .postgres import bin_dir
from .proc import StackError

#: Debian package -> how to tell it is installed.
PACKAGES = {
    "redis-server": lambda: shutil.which("redis-server") is not None,
    "postgresql": lambda: bin_dir() is not None,
    "ffmpeg": lambda: shutil.which("ffmpeg") is not None,
    "espeak-ng": lambda: shutil.which("espeak-ng") is not None,
    "sox": lambda: shutil.which("sox") is not None,
    "openjdk-17-jre-headless": lambda: shutil.which("java") is not None,
    "maven": lambda: shutil.which("mvn") is not None,
    # Produces the records the bridge's tests need that Python clients cannot (a header
    # key that is not UTF-8); handy for operators replaying the DLQ.
    "kcat": lambda: shutil.which("kcat") is not None,
    # The web page's browser test (tests/browser): Debian's chromium and its WebDriver.
    "chromium": lambda: shutil.which("chromium") is not None,
    "chromium-driver": lambda: shutil.which("chromedriver") is not None,
}
#: Packages each service cannot start without.
NEEDS = {
    "redis": ["redis-server"],
    "postgres": ["postgresql"],
    "kafka": ["openjdk-17-jre-headless", "maven"],
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def missing_packages(names: list[str] | None = None) -> list[str]:
    return [name for name in (names or list(PACKAGES)) if not PACKAGES[name]()]


def apt_install(names: list[str]) -> None:
    """apt-get update + install, only when something is missing."""
    if not names:
        return
    if os.geteuid() != 0:
        raise StackError("install", f"missing Debian packages {' '.join(names)}; "
                         "run `ops/stack.py install` as root or apt-get install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "--no-install-recommends", *names]):
        try:
            result = subprocess.run(argv, env=env, capture_output=True, text=True)
        except FileNotFoundError:
            raise StackError("install", f"apt-get not found; install {' '.join(names)} by hand") from None
        if result.returncode != 0:
            lines = [ln for ln in result.stderr.splitlines() if ln.strip()] or ["(no output)"]
            raise StackError("install", f"{' '.join(argv[:2])} failed: {lines[-1]}")


def fetch_kafka_jars(version: str, libs: Path) -> bool:
    """Copy kafka_2.13:<version> and its runtime dependencies into ``libs``; False if present.

    Maven writes into a scratch folder that is renamed at the end, so an interrupted
    download is never mistaken for a complete one.
    """
    if libs.is_dir() and any(libs.glob(f"kafka_2.13-{version}.jar")):
        return False
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("kafka", "mvn not found; run `ops/stack.py install` as root "
                         "or apt-get install maven")
    scratch = libs.with_name(libs.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    libs.parent.mkdir(parents=True, exist_ok=True)
    argv = [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(OPS / "kafka" / "pom.xml"),
            f"-Dkafka.version={version}", "dependency:copy-dependencies",
            f"-DoutputDirectory={scratch}"]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [ANSI.sub("", ln).strip() for ln in (result.stdout + result.stderr).splitlines()]
        errors = [ln for ln in lines if ln.startswith("[ERROR]") and len(ln) > 8] or lines or [""]
        raise StackError("kafka", f"mvn could not fetch org.apache.kafka:kafka_2.13:{version} "
                         f"(exit {result.returncode}): {errors[0][:300]}; check SONIC_KAFKA_VERSION "
                         "and access to Maven Central")
    shutil.rmtree(libs, ignore_errors=True)
    scratch.rename(libs)
    return True

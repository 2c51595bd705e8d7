"""Settings: one typed object from SONIC_ variables, secrets never printed."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from pipeline.settings import Settings


def test_env_prefix_and_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONIC_REDIS_PORT", "7000")
    monkeypatch.setenv("SONIC_ALLOWED_HOSTS", "cdn.example.com, media.example.com")
    settings = Settings()
    assert settings.redis_port == 7000
    assert settings.allowed_hosts == ["cdn.example.com", "media.example.com"]
    assert settings.broker_url == "redis://127.0.0.1:7000/0"


def test_secrets_are_masked_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONIC_PG_PASSWORD", "s3cr3t-pg")
    monkeypatch.setenv("SONIC_REDIS_PASSWORD", "s3cr3t-redis")
    settings = Settings()
    assert "s3cr3t" not in repr(settings)
    assert "s3cr3t" not in str(settings.redacted())
    # The derived URLs carry them (URL-quoted), for the drivers only.
    assert "s3cr3t-pg" in settings.database_url
    assert settings.broker_url.startswith("redis://:s3cr3t-redis@")


def test_work_dirs_follow_state_dir(tmp_path) -> None:
    settings = Settings(state_dir=tmp_path)
    assert settings.work_dir == tmp_path / "work"
    assert settings.storage_dir == tmp_path / "objects"


def test_window_marks_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="BACKLOG_LOW"):
        Settings(backlog_max=10, backlog_low=10)


def test_bad_setting_is_one_line_and_exit_3() -> None:
    env = {"SONIC_REDIS_PORT": "not-a-port", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "settings"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "SONIC_REDIS_PORT" in lines[0] and "config.invalid" in lines[0]


@pytest.mark.parametrize("sasl,missing", [
    ({"SONIC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, ["SONIC_KAFKA_SASL_MECHANISM"]),
    ({"SONIC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SONIC_KAFKA_SASL_MECHANISM": "PLAIN",
      "SONIC_KAFKA_SASL_USERNAME": "bridge", "SONIC_KAFKA_SASL_PASSWORD": ""},
     ["SONIC_KAFKA_SASL_PASSWORD"]),
    ({"SONIC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SONIC_KAFKA_SASL_MECHANISM": "PLAIN",
      "SONIC_KAFKA_SASL_USERNAME": "bridge"}, ["SONIC_KAFKA_SASL_PASSWORD"]),
    ({"SONIC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
      "SONIC_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "SONIC_KAFKA_SASL_USERNAME": "",
      "SONIC_KAFKA_SASL_PASSWORD": "p4ss"}, ["SONIC_KAFKA_SASL_USERNAME"]),
    ({"SONIC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SONIC_KAFKA_SASL_MECHANISM": "PLAIN"},
     ["SONIC_KAFKA_SASL_USERNAME", "SONIC_KAFKA_SASL_PASSWORD"]),
])
def test_an_incomplete_sasl_login_is_a_configuration_error_at_once(
        sasl: dict[str, str], missing: list[str]) -> None:
    """Not a bootstrap timeout at the broker: one line naming what is missing, exit 3,
    before any connection (the broker named here does not exist)."""
    env = {"PATH": "/usr/bin:/bin", "SONIC_KAFKA_BOOTSTRAP": "192.0.2.1:9092", **sasl}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "topics", "create"],
                          capture_output=True, text=True, env=env, timeout=20)
    assert proc.returncode == 3, proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert line.startswith("sonic-pipeline: config.invalid: ") and "p4ss" not in line
    assert all(name in line for name in missing), line


def test_a_complete_sasl_login_and_other_mechanisms_pass() -> None:
    Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN",
             kafka_sasl_username="bridge", kafka_sasl_password="secret")
    Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="OAUTHBEARER")
    Settings(kafka_sasl_password="")  # no SASL: an empty password is never used

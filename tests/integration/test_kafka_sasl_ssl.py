"""Kafka over SASL_SSL, set only through ``SONIC_KAFKA_*``: a private broker whose client
listener is SASL_SSL (PLAIN, a self-signed PEM certificate; the controller and the
broker's own listener stay PLAINTEXT on other ports). The real bridge admits jobs from it
and dead-letters a bad one there; the CLI says a wrong password in one line without the
password; a PLAINTEXT client is refused on that port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from sqlalchemy import Engine, text

from pipeline.console.kafka import read_all
from pipeline.settings import Settings
from tests.bridge.conftest import REDIS_DBS, Case
from tests.support.kafka_broker import PrivateKafka
from tests.support.server import free_port
from tests.support.tls import self_signed

pytestmark = [pytest.mark.integration]

USER = "sonic"
CLI = str(Path(sys.executable).parent / "sonic-pipeline")
LISTENER = "CLIENT"


@pytest.fixture
def secure_kafka(stack: Settings, tmp_path: Path, unique: str) -> Iterator[PrivateKafka]:
    password = f"pw-{unique}-Zq9"
    cert, key = self_signed(tmp_path, "localhost", ip="127.0.0.1")
    keystore = tmp_path / "broker.pem"  # Kafka's PEM keystore: the key, then the chain
    keystore.write_text(key.read_text() + cert.read_text())
    port, internal, controller = free_port(), free_port(), free_port()
    jaas = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{USER}" password="{password}" user_{USER}="{password}";')
    name = LISTENER.lower()
    properties: dict[str, object] = {
        "listeners": f"{LISTENER}://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal},"
                     f"CONTROLLER://127.0.0.1:{controller}",
        "advertised.listeners": f"{LISTENER}://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal}",
        "listener.security.protocol.map":
            f"{LISTENER}:SASL_SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "INTERNAL",
        f"listener.name.{name}.sasl.enabled.mechanisms": "PLAIN",
        f"listener.name.{name}.plain.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PEM", "ssl.keystore.location": str(keystore),
        "ssl.truststore.type": "PEM", "ssl.truststore.location": str(cert),
    }
    kafka = PrivateKafka(stack, tmp_path / "kafka-state", port=port, controller_port=controller,
                         properties=properties, settings={
                             "kafka_security_protocol": "SASL_SSL",
                             "kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": USER,
                             "kafka_sasl_password": SecretStr(password),
                             "kafka_ssl_cafile": str(cert)})
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


def _kafka_env(settings: Settings, **changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONIC_KAFKA_")}
    assert settings.kafka_sasl_password is not None
    env.update(SONIC_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
               SONIC_KAFKA_SECURITY_PROTOCOL=settings.kafka_security_protocol,
               SONIC_KAFKA_SASL_MECHANISM=str(settings.kafka_sasl_mechanism),
               SONIC_KAFKA_SASL_USERNAME=str(settings.kafka_sasl_username),
               SONIC_KAFKA_SASL_PASSWORD=settings.kafka_sasl_password.get_secret_value(),
               SONIC_KAFKA_SSL_CAFILE=str(settings.kafka_ssl_cafile))
    env.update({f"SONIC_KAFKA_{k.upper()}": v for k, v in changes.items()})
    return env


def _cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *argv], env=env, capture_output=True, text=True, timeout=60)


def test_bridge_cli_and_clients_over_sasl_ssl(secure_kafka: PrivateKafka, db_engine: Engine,
                                              unique: str, tmp_path: Path) -> None:
    topic = f"test-sasl-{unique}"
    settings = secure_kafka.settings.model_copy(update={
        "topic_tasks": topic, "topic_dlq": f"{topic}-dlq", "topic_control": f"{topic}-control",
        "topic_status": f"{topic}-status", "topic_partitions": 2,
        "consumer_group": f"{topic}-group", "metrics_port": 0, "redis_db": REDIS_DBS[-1],
        "gpu_slots": 100_000, "tenant_inflight_max": 1_000_000})
    case = Case(settings, db_engine, unique, tmp_path)
    password = settings.kafka_sasl_password.get_secret_value()  # type: ignore[union-attr]
    good = dict(case.env, **_kafka_env(settings), SONIC_TOPIC_STATUS=settings.topic_status,
                SONIC_TOPIC_PARTITIONS="2")
    case.redis.flushdb()
    try:
        # The CLI makes the topics over SASL_SSL with the settings alone ...
        made = _cli(good, "topics", "create")
        assert made.returncode == 0, made.stdout + made.stderr

        # ... a wrong password is one line naming Kafka, exit 4, no password anywhere.
        # (Each refused call waits out the client's bootstrap: one verb per kind. 10 s, not
        # the default 5: on a loaded machine the TLS and SCRAM exchange alone took longer,
        # and the call said it could not reach the broker instead of naming the refusal.)
        for user, wrong, argv in ((USER, f"wrong-{unique}", ("topics", "create")),
                                  (f"nobody-{unique}", password, ("dlq", "list"))):
            bad = dict(good, SONIC_KAFKA_SASL_USERNAME=user, SONIC_KAFKA_SASL_PASSWORD=wrong,
                       SONIC_KAFKA_BOOTSTRAP_TIMEOUT_S="10")
            result = _cli(bad, *argv)
            out = result.stdout + result.stderr
            assert result.returncode == 4, (argv, out)
            lines = [ln for ln in out.splitlines() if ln.strip()]
            assert len(lines) == 1 and "authentication refused" in lines[0], (argv, out)
            assert "SONIC_KAFKA_SASL_PASSWORD" in lines[0], out
            assert password not in out and wrong not in out, out

        # A real bridge admits jobs from that broker, commits, and dead-letters a bad one.
        ids = [f"sasl-{unique}-{i}" for i in range(5)]
        case.produce([*case.jobs(ids), (b"bad", b"{not json")])
        bridge = subprocess.Popen([sys.executable, "-m", "bridge"], cwd=Path(__file__).parents[2],
                                  env=good, stdout=(tmp_path / "bridge-0.log").open("wb"),
                                  stderr=subprocess.STDOUT)
        case.procs.append(bridge)
        case.wait(lambda: case.count() == len(ids), 20, "5 jobs admitted over SASL_SSL")
        case.wait(lambda: case.lag() == 0, 15, "offsets committed over SASL_SSL")
        dead = case.dead_letters(1, timeout_s=15)
        assert len(dead) == 1 and dead[0].key == b"bad", dead
        assert sorted(case.rows()) == sorted(ids)
        # ... and its status relay publishes their events there.
        case.wait(lambda: set(ids) <= {json.loads(r.value)["task_id"] for r in
                                       read_all(settings, settings.topic_status)},
                  15, "status events over SASL_SSL")
        assert case.stop(bridge, timeout_s=30) == 0
        log = (tmp_path / "bridge-0.log").read_text(errors="replace")
        assert password not in log

        # A PLAINTEXT client on the SASL_SSL port is refused.
        with pytest.raises(KafkaError):
            KafkaAdminClient(bootstrap_servers=[settings.kafka_bootstrap],
                             bootstrap_timeout_ms=3000, request_timeout_ms=3000).close()
        plain = _cli(dict(good, SONIC_KAFKA_SECURITY_PROTOCOL="PLAINTEXT"), "topics", "create")
        assert plain.returncode == 4, plain.stdout + plain.stderr
        assert "authentication refused" not in plain.stdout + plain.stderr
    finally:
        for proc in case.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with db_engine.begin() as conn:
            conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": topic})
            conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": topic})
        case.redis.flushdb()

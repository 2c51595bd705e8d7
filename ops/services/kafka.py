"""Kafka: one KRaft node that is both broker and controller, run straight from the jars.

The jars come from Maven Central (``ops/kafka/pom.xml``, see :mod:`ops.services.install`);
the storage is formatted once with a cluster id kept in the state dir.
"""

from __future__ import annotations

import base64
import logging
import shutil
import subprocess
import uuid
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from .base import Service
from .proc import StackError, port_answers

OPS = Path(__file__).resolve().parents[1]
LOG4J_CONFIG = OPS / "kafka" / "log4j2.properties"

# kafka-python logs every refused connection while the broker boots: keep it quiet.
logging.getLogger("kafka").setLevel(logging.CRITICAL)


def bootstrap_port(settings) -> int:
    first = settings.kafka_bootstrap.split(",")[0]
    try:
        return int(first.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        raise StackError("kafka", f"cannot read a port from SONIC_KAFKA_BOOTSTRAP={first!r}") from None


def java() -> str:
    found = shutil.which("java")
    if found is None:
        raise StackError("kafka", "java not found on PATH; install Java 17 "
                         "(apt-get install openjdk-17-jre-headless) or run `ops/stack.py install` as root")
    return found


class Kafka(Service):
    name = "kafka"
    marker = "kafka.Kafka"
    stop_timeout = 30.0
    start_timeout = 120.0

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.port = bootstrap_port(settings)
        self.libs = self.home / f"libs-{settings.kafka_version}"
        self.data = self.home / "data"
        self.config = self.home / "server.properties"

    def ports(self) -> list[tuple[int, str]]:
        return [(self.port, "SONIC_KAFKA_BOOTSTRAP"),
                (self.settings.kafka_controller_port, "SONIC_KAFKA_CONTROLLER_PORT")]

    def classpath(self) -> str:
        if not self.libs.is_dir():
            raise StackError(self.name, f"no jars in {self.libs}; run `ops/stack.py install`")
        return f"{self.libs}/*"  # expanded by java itself

    def properties(self) -> dict[str, object]:
        s, host, ctl = self.settings, self.host, self.settings.kafka_controller_port
        return {
            "process.roles": "broker,controller",
            "node.id": 1,
            "controller.quorum.voters": f"1@{host}:{ctl}",
            "listeners": f"PLAINTEXT://{host}:{self.port},CONTROLLER://{host}:{ctl}",
            "advertised.listeners": f"PLAINTEXT://{host}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data),
            # Topics made on the fly (tests) get the task topic's partition count.
            "num.partitions": s.topic_partitions,
            "default.replication.factor": 1,
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 8,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            "group.initial.rebalance.delay.ms": 0,
            # Above SONIC_MAX_MESSAGE_BYTES on purpose: an oversize job must reach the
            # bridge (and the DLQ, original bytes included) to be rejected with a code.
            "message.max.bytes": 1048588,
            "num.network.threads": 2,
            "num.io.threads": 4,
            "num.recovery.threads.per.data.dir": 1,
            "log.retention.hours": 168,
        }

    def prepare(self) -> None:
        java()
        self.classpath()
        self.config.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        if (self.data / "meta.properties").exists():
            return
        argv = [java(), "-Xmx256m", "-cp", self.classpath(),
                f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", "kafka.tools.StorageTool",
                "format", "--cluster-id", self.cluster_id(), "--config", str(self.config)]
        result = subprocess.run(argv, capture_output=True, text=True)
        with self.log.open("a") as log:
            log.write(result.stdout + result.stderr)
        if result.returncode != 0:
            lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
            raise StackError(self.name, f"storage format failed; see {self.log}: "
                             f"{lines[-1] if lines else '(no output)'}")

    def cluster_id(self) -> str:
        """A cluster id made once and kept: the storage is formatted with it."""
        path = self.home / "cluster.id"
        if path.exists():
            return path.read_text().strip()
        while True:
            # Kafka's Uuid text form: 16 random bytes, URL-safe base64, no padding.
            value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            if not value.startswith("-"):  # would read as an option on a command line
                break
        path.write_text(value + "\n")
        return value

    def command(self) -> list[str]:
        return [java(), f"-Xmx{self.settings.kafka_heap}", "-Xms128m", "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
                "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
                "-cp", self.classpath(), "kafka.Kafka", str(self.config)]

    def spawn_options(self) -> dict[str, object]:
        return {"cwd": self.home}

    def admin(self, timeout_ms: int = 5000) -> KafkaAdminClient:
        return KafkaAdminClient(bootstrap_servers=[f"{self.host}:{self.port}"],
                                client_id="sonic-stack", bootstrap_timeout_ms=timeout_ms,
                                request_timeout_ms=timeout_ms)

    def probe(self) -> bool:
        if not port_answers(self.host, self.port):
            return False
        try:
            admin = self.admin()
        except KafkaError:
            return False
        try:
            return bool(admin.describe_cluster().get("brokers"))
        except KafkaError:
            return False
        finally:
            admin.close()

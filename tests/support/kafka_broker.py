"""A private single-node Kafka (KRaft) for tests that stop it or change its listeners:
free ports, its data in a temporary dir, the stack's jars."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient

from ops.services.kafka import Kafka
from pipeline.settings import Settings
from tests.support.server import free_port


class _Node(Kafka):
    """The stack's Kafka with extra broker properties; probed with the settings' client
    security options (so a SASL/SSL listener is probed as clients reach it)."""

    def __init__(self, settings: Settings, extra: dict[str, object]) -> None:
        super().__init__(settings)
        self.extra = extra

    def properties(self) -> dict[str, object]:
        return {**super().properties(), **self.extra}

    def admin(self, timeout_ms: int = 5000) -> KafkaAdminClient:
        return KafkaAdminClient(client_id="sonic-stack", bootstrap_timeout_ms=timeout_ms,
                                request_timeout_ms=timeout_ms,
                                **self.settings.kafka_client_config())


class PrivateKafka:
    """One KRaft node on free ports, its data in a temporary dir, the stack's jars.

    ``settings``: settings updates for its clients (e.g. ``kafka_security_protocol``);
    ``properties``: broker properties over the stack's (e.g. ``listeners``). The client
    port is ``self.port``; the settings' ``kafka_bootstrap`` names it."""

    def __init__(self, stack: Settings, root: Path, settings: dict[str, Any] | None = None,
                 properties: dict[str, object] | None = None, port: int | None = None,
                 controller_port: int | None = None) -> None:
        self.port = port or free_port()
        self.settings = stack.model_copy(update={
            "state_dir": root, "kafka_bootstrap": f"127.0.0.1:{self.port}",
            "kafka_controller_port": controller_port or free_port(), "kafka_heap": "256m",
            **(settings or {})})
        self.kafka = _Node(self.settings, dict(properties or {}))
        self.kafka.home.mkdir(parents=True)
        self.kafka.libs.symlink_to(Kafka(stack).libs)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = self.kafka.start()
        self.kafka.wait_ready(self.proc)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()

"""Producing jobs to the task topic, and telling whether Kafka answers.

One producer per process (``acks=all``, idempotent), made on first use so the service
starts while Kafka is down; a send waits at most ``BOOTSTRAP_TIMEOUT_S`` for a first
broker and ``SEND_TIMEOUT_S`` for the acknowledgement, else :class:`ServiceUnavailable` (the caller answers 503; nothing was
admitted). :meth:`Kafka.healthy` asks the cluster for its metadata, bounded in time.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError as Timeout
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError

from pipeline.errors import ServiceUnavailable
from pipeline.settings import Settings

log = logging.getLogger(__name__)

#: Seconds a produce may wait for the broker's acknowledgement.
SEND_TIMEOUT_S = 10.0
#: Seconds a new client waits for a broker (the library's default is 30).
BOOTSTRAP_TIMEOUT_S = 5.0
#: Seconds a health check waits for the cluster's answer.
CHECK_TIMEOUT_S = 2.0


class Kafka:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic_tasks
        self._producer: KafkaProducer | None = None
        self._admin: KafkaAdminClient | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-health")
        self._check: Future[Any] | None = None

    def _client_config(self) -> dict[str, Any]:
        return {**self.settings.kafka_client_config(), "request_timeout_ms": 5000,
                "bootstrap_timeout_ms": int(BOOTSTRAP_TIMEOUT_S * 1000)}

    def producer(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                self._producer = KafkaProducer(
                    acks="all", max_block_ms=int(SEND_TIMEOUT_S * 1000),
                    **self._client_config())
            return self._producer

    def send(self, task_id: str, value: bytes) -> tuple[int, int]:
        """Produce one job keyed by its id; (partition, offset) once acknowledged."""
        try:
            meta = self.producer().send(self.topic, key=task_id.encode(), value=value
                                        ).get(timeout=SEND_TIMEOUT_S)
        except KafkaError as exc:
            raise ServiceUnavailable(f"kafka: the job could not be produced to {self.topic} "
                                     f"({type(exc).__name__})") from None
        return meta.partition, meta.offset

    def healthy(self) -> str | None:
        """None when the cluster answers within CHECK_TIMEOUT_S, else why not."""
        with self._lock:
            if self._check is None or self._check.done():
                self._check = self._pool.submit(self._describe)
            check = self._check
        try:
            check.result(timeout=CHECK_TIMEOUT_S)
        except Timeout:
            return f"no answer from {self.settings.kafka_bootstrap} in {CHECK_TIMEOUT_S:g} s"
        except Exception as exc:  # noqa: BLE001 - any client failure is "down"
            return f"{type(exc).__name__}: {exc}"[:200]
        return None

    def _describe(self) -> None:
        try:
            if self._admin is None:
                self._admin = KafkaAdminClient(**self._client_config())
            self._admin.describe_cluster()
        except Exception:
            admin, self._admin = self._admin, None
            if admin is not None:
                admin.close()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for client in (self._producer, self._admin):
            if client is not None:
                try:
                    client.close(timeout=5) if client is self._producer else client.close()
                except Exception as exc:  # noqa: BLE001 - closing on the way out
                    log.debug("closing a Kafka client: %s", exc)

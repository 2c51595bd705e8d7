"""Wiring: check the services, build the steps, run the loop, map the outcome to an exit code.

Exit codes: 0 stopped cleanly (signal), 1 unexpected error, 3 configuration error,
4 a service cannot be reached at start, 5 the invalid-message cap tripped,
6 a second signal stopped it at once.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial

from kafka import KafkaConsumer, KafkaProducer
from pydantic import ValidationError
from sqlalchemy import Engine

from bridge import kafka_pin, metrics
from bridge.admit import Admit
from bridge.backpressure import Backlog, Backpressure
from bridge.batches import BatchThread
from bridge.consumer import CHECK_CRCS, Rebalance, make_consumer
from bridge.control import running as control_running
from bridge.db import Postgres
from bridge.decode import DecodeStep
from bridge.dlq import DeadLetters
from bridge.errors import TRANSIENT
from bridge.guard import InvalidRatio, InvalidRatioExceeded
from bridge.loop import Every, Loop
from bridge.process import Process
from bridge.rawfetch import RawFetcher
from bridge.services import kafka, postgres, redis_client
from bridge.signals import Shutdown
from bridge.undecodable import UndecodableStep
from pipeline import celery_pin, chains, reconcile
from pipeline.epoch import RedisEpoch
from pipeline.scheduler.dispatcher import Dispatcher, Publish
from pipeline.scheduler.pick import backlog
from pipeline.status import relaying
from pipeline.scheduler.metrics import SchedulerGauges
from pipeline.errors import EXIT_OK, ConfigError, ServiceUnavailable
from pipeline.settings import Settings, describe_error, load

log = logging.getLogger("bridge")

#: Too many invalid messages (the other exit codes are pipeline.errors').
EXIT_INVALID_RATIO = 5



def main() -> int:
    """``python -m bridge`` (and ``sonic-pipeline bridge``, which execs it): settings from
    the environment, a malformed one reported on one line with exit 3."""
    try:
        settings = load()
    except ValidationError as exc:
        print(f"bridge: {describe_error(exc)}", file=sys.stderr)
        return ConfigError.exit_code
    return run(settings)


def run(settings: Settings) -> int:
    """Run the bridge until SIGTERM/SIGINT; the exit code says how it ended."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    shutdown = Shutdown()
    shutdown.install()
    try:
        with _assemble(settings, shutdown) as loop:
            log.info("bridge: consuming %s as group %s", settings.topic_tasks,
                     settings.consumer_group)
            loop.run()
        log.info("bridge: stopped cleanly")
        return EXIT_OK
    except (ConfigError, ServiceUnavailable) as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return exc.exit_code
    except InvalidRatioExceeded as exc:
        log.critical("bridge: %s", exc)
        print(f"bridge: {exc}", file=sys.stderr)
        return EXIT_INVALID_RATIO
    finally:
        shutdown.restore()


@contextmanager
def _assemble(settings: Settings, shutdown: Shutdown) -> Iterator[Loop]:
    topic = settings.topic_tasks
    kafka_pin.check_client()  # consumer.py and rawfetch.py rely on its internals
    celery_pin.check()  # the dispatcher's chain message (pipeline/chains.py)
    bootstrap_ms = int(settings.kafka_bootstrap_timeout_s * 1000)
    with ExitStack() as stack:
        db_engine = postgres(settings)
        stack.callback(db_engine.dispose)
        client = redis_client(settings)
        stack.callback(client.close)
        producer = kafka(settings, lambda: KafkaProducer(
            acks="all", linger_ms=5, max_request_size=8 * 1024 * 1024,
            bootstrap_timeout_ms=bootstrap_ms,
            **settings.kafka_client_config()))
        stack.callback(producer.close, 10)
        consumer = kafka(settings, lambda: make_consumer(
            settings, bootstrap_timeout_ms=bootstrap_ms))
        stack.callback(consumer.close, autocommit=False)  # leaves the group
        rebalance = Rebalance(consumer)
        consumer.subscribe([topic], listener=rebalance)

        app = chains.make_app(settings)
        publish = partial(chains.dispatch_one, app)
        db = Postgres(db_engine)
        stack.callback(db.close)
        process = Process(Admit(db), DeadLetters(producer, settings.topic_dlq), topic)
        batches = BatchThread(process)
        stack.callback(batches.close)
        stack.enter_context(_dispatching(settings, db_engine, publish))
        # Status events: the outbox to Kafka (one active relay per topic), latest in Redis.
        stack.enter_context(relaying(settings, db_engine, client))
        stack.enter_context(control_running(settings, db_engine, producer))
        periodic = [
            # The first sweep runs at once: what a dead bridge left is seen to now.
            Every(settings.reconcile_interval_s, partial(
                reconcile.sweep, db_engine, topic=topic, max_attempts=settings.max_attempts,
                dispatch=publish, stalled_after_s=settings.stalled_after_s,
                callback_max_age_s=settings.webhook_max_age_s,
                broker=RedisEpoch(client, db_engine, topic)),
                "reconciler", first_s=0.0),
            Every(settings.lag_interval_s,
                  lambda: metrics.observe_consumer(consumer, topic), "lag"),
        ]
        decode = DecodeStep(settings)
        undecodable = UndecodableStep(RawFetcher(lambda: KafkaConsumer(
            client_id=f"{consumer.config['client_id']}-raw", enable_auto_commit=False,
            bootstrap_timeout_ms=bootstrap_ms,
            **settings.kafka_client_config())), decode.salvaged, CHECK_CRCS)
        stack.callback(undecodable.close)
        loop = Loop(consumer, rebalance, decode,
                    InvalidRatio(settings.invalid_ratio_max, settings.invalid_window), batches,
                    Backpressure(settings.backlog_max, settings.backlog_low,
                                 settings.bridge_batch_max),
                    Backlog(partial(_count_backlog, db_engine, topic),
                            settings.inflight_refresh_s),
                    shutdown, settings.bridge_poll_timeout_ms, periodic, topic,
                    undecodable=undecodable)
        metrics.start(topic)
        metrics.watch_fleet(db_engine, app, topic)
        metrics.serve(settings.metrics_port)
        yield loop


@contextmanager
def _dispatching(settings: Settings, db_engine: Engine, publish: Publish) -> Iterator[None]:
    """The topic's dispatcher on a thread of its own, for as long as the bridge runs (one
    bridge's dispatcher is active per topic; the others stand by on its lock)."""
    dispatcher = Dispatcher(
        db_engine, settings.topic_tasks, publish, window=settings.dispatch_window,
        tenant_cap=settings.tenant_inflight_max, dependency_wait_s=settings.dependency_wait_s,
        idle_s=settings.dispatch_idle_s, weights=settings.tenant_weights, errors=TRANSIENT,
        gauges=SchedulerGauges(settings.topic_tasks, settings.metrics_top_tenants,
                               settings.metrics_scan_s),
        express=settings.gpu_slots)
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop,), name="dispatcher",
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)  # a pick under way publishes and commits first


def _count_backlog(db_engine: Engine, topic: str) -> int:
    with db_engine.connect() as conn:
        return backlog(conn, topic)

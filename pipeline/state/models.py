"""SQLAlchemy models of the ``tasks`` and ``task_events`` tables (a public contract).

Admins query these with SQL; the README documents the columns. Schema changes go through
one Alembic revision each (``migrations/versions``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pipeline.state.status import Status

STATUS_VALUES = ", ".join(f"'{s.value}'" for s in Status)
FINAL_VALUES = ", ".join(f"'{s.value}'" for s in Status if s.final)


class Base(DeclarativeBase):
    pass


class Task(Base):
    __tablename__ = "tasks"

    task_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # Where the job came from (the first delivery that admitted it).
    kafka_topic: Mapped[str | None] = mapped_column(String(249))
    kafka_partition: Mapped[int | None] = mapped_column(Integer)
    kafka_offset: Mapped[int | None] = mapped_column(BigInteger)
    kafka_key: Mapped[str | None] = mapped_column(Text)
    ordering_key: Mapped[str | None] = mapped_column(Text)
    tenant: Mapped[str | None] = mapped_column(String(128))
    user_id: Mapped[str | None] = mapped_column(String(128))
    priority: Mapped[int] = mapped_column(SmallInteger, server_default="5")
    engine: Mapped[str | None] = mapped_column(String(64))
    depends_on: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    #: Admission order (an identity: a batch is inserted in Kafka offset order).
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=False), nullable=False)
    status: Mapped[str] = mapped_column(String(16), server_default=Status.RECEIVED.value)
    stage: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(Float, server_default="0")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")

    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    config: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))

    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    result_url: Mapped[str | None] = mapped_column(Text)
    result_key: Mapped[str | None] = mapped_column(Text)

    callback_url: Mapped[str | None] = mapped_column(Text)
    callback_status: Mapped[str | None] = mapped_column(String(16))
    callback_attempts: Mapped[int] = mapped_column(Integer, server_default="0")

    # The lease of the stage now running (one live copy per task).
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_stage: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(f"status IN ({STATUS_VALUES})", name="tasks_status_valid"),
        CheckConstraint("progress >= 0 AND progress <= 100", name="tasks_progress_range"),
        Index("ix_tasks_status_received", "status", "received_at"),
        Index("ix_tasks_received_at", "received_at"),
        # Finished jobs only (migration 0008): every query on it bounds finished_at.
        Index("ix_tasks_finished_at", "finished_at",
              postgresql_where=text("finished_at IS NOT NULL")),
        Index("ix_tasks_tenant_received", "tenant", "received_at"),
        # The scheduler's (migration 0003): the dispatch order inside a tenant, ...
        Index("ix_tasks_pick", "kafka_topic", text("coalesce(tenant, '')"),
              text("sonic_rank(received_at, priority)"),
              postgresql_where=text("status = 'received'")),
        Index("ix_tasks_key_seq", "ordering_key", "seq",
              postgresql_where=text(f"ordering_key IS NOT NULL AND status NOT IN ({FINAL_VALUES})")),
        Index("ix_tasks_waiting", "received_at", postgresql_where=text("status = 'waiting'")),
        Index("ix_tasks_deadline", "deadline", postgresql_where=text(
            "deadline IS NOT NULL AND status IN ('received', 'waiting', 'queued')")),
        Index("ix_tasks_inflight_stage", "kafka_topic", "stage",
              postgresql_where=text("status IN ('queued', 'running')")),
        Index("ix_tasks_owed_callback", "finished_at", postgresql_where=text(
            "callback_status IS NULL AND (status IN ('cancelled', 'expired') OR error_code IN "
            "('dependency.failed', 'dependency.unknown', 'dependency.cycle') "
            "OR (status = 'rejected' AND callback_url IS NOT NULL))")),
        Index(
            "ix_tasks_error_code",
            "error_code",
            "finished_at",
            postgresql_where=text("error_code IS NOT NULL"),
        ),
        Index(
            "ix_tasks_lease_expiry",
            "lease_expires_at",
            postgresql_where=text("lease_owner IS NOT NULL"),
        ),
        # The admin views' (migration 0005): failed and expired jobs by the time they ended.
        Index("ix_tasks_failed_finished", "finished_at",
              postgresql_include=["error_code", "stage"],
              postgresql_where=text("status IN ('failed', 'expired')")),
    )


class TaskEvent(Base):
    """Append-only history: one row per thing that happened to a task."""

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("tasks.task_id", ondelete="CASCADE"), nullable=False
    )
    stage: Mapped[str | None] = mapped_column(String(32))
    event: Mapped[str] = mapped_column(String(32), nullable=False)
    worker: Mapped[str | None] = mapped_column(String(255))
    attempt: Mapped[int] = mapped_column(Integer, server_default="0")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    duration_s: Mapped[float | None] = mapped_column(Float)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))

    __table_args__ = (
        Index("ix_task_events_task_at", "task_id", "at"),
        Index("ix_task_events_at", "at"),
        Index("ix_task_events_event_at", "event", "at"),
        # The admin views' (migration 0005): ended stage runs by time, read from the index.
        Index("ix_task_events_runs", "at",
              postgresql_include=["stage", "duration_s", "task_id", "event"],
              postgresql_where=text("event IN ('succeeded', 'failed', 'retrying', 'lease_lost', "
                                    "'cancelled') AND duration_s IS NOT NULL")),
    )


class BrokerEpoch(Base):
    """The Celery broker's ``run_id`` the reconciler last handled, per topic
    (:mod:`pipeline.epoch`)."""

    __tablename__ = "broker_epochs"

    topic: Mapped[str] = mapped_column(String(249), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), nullable=False)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(),
                                              nullable=False)


class TaskDependency(Base):
    """One ``depends_on`` entry of a job: ``task_id`` waits for ``depends_on``."""

    __tablename__ = "task_dependencies"

    task_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("tasks.task_id", ondelete="CASCADE"), primary_key=True)
    depends_on: Mapped[str] = mapped_column(String(128), primary_key=True)

    __table_args__ = (Index("ix_task_dependencies_depends_on", "depends_on"),)


class Tenant(Base):
    """A tenant's share of a topic's fleet and its live counts (kept by triggers, migration 0003):
    ``runnable`` jobs (``received``), ``waiting`` ones and ``inflight`` ones (``queued`` or
    ``running``). The dispatcher serves the tenant with the least in flight per weight."""

    __tablename__ = "tenants"

    #: The task topic the counts are for ('' for jobs with none); one dispatcher each.
    topic: Mapped[str] = mapped_column(String(249), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    weight: Mapped[float] = mapped_column(Float, server_default="1", nullable=False)
    runnable: Mapped[int] = mapped_column(Integer, server_default="0", nullable=False)
    waiting: Mapped[int] = mapped_column(Integer, server_default="0", nullable=False)
    inflight: Mapped[int] = mapped_column(Integer, server_default="0", nullable=False)
    picked_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("'-infinity'"), nullable=False)

    __table_args__ = (
        CheckConstraint("weight > 0", name="tenants_weight_positive"),
        # The tenant to serve next: least in flight per weight, then the longest unserved.
        Index("ix_tenants_pick", "topic", text("(inflight / weight)"), "picked_at",
              postgresql_where=text("runnable > 0")),
    )


class StatusOutbox(Base):
    """One status event of a job, written by triggers in the transaction of the change it
    tells (migration 0004); the relay publishes it to Kafka and sets ``published_at``.

    ``id`` grows in commit order per task (the Server-Sent Events id); ``seq`` numbers a
    task's events 1, 2, 3 ...; ``body`` is the event (README "Status events")."""

    __tablename__ = "status_outbox"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(128), nullable=False)
    #: The task's Kafka topic ('' for none): one relay per topic publishes its events.
    topic: Mapped[str] = mapped_column(String(249), nullable=False, server_default="")
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    event: Mapped[str] = mapped_column(String(32), nullable=False)
    body: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp(), nullable=False)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_status_outbox_pending", "topic", "id",
              postgresql_where=text("published_at IS NULL")),
        Index("ix_status_outbox_task", "task_id", "id"),
        Index("ix_status_outbox_published", "topic", "published_at",
              postgresql_where=text("published_at IS NOT NULL")),
    )

"""Typed settings for every entry point, read once from the environment (prefix ``SONIC_``).

Each process (bridge, worker, CLI, ops) builds one :class:`Settings` at start-up and passes
it down; no other module reads the environment. Credentials are :class:`SecretStr`: they
never appear in ``repr()``, logs or error messages. Defaults point at the local stack that
``make up`` starts on loopback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Stage names, in chain order. Each has its own Celery queue of the same name.
STAGES: tuple[str, ...] = ("preprocess", "gpu", "encode", "upload", "callback")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SONIC_", extra="ignore", frozen=True)

    # --- local stack ------------------------------------------------------------------
    #: Where the local stack keeps data, logs and PID files.
    state_dir: Path = Path(".state")
    #: Bind address of every local service.
    host: str = "127.0.0.1"

    # --- Kafka ------------------------------------------------------------------------
    kafka_bootstrap: str = "127.0.0.1:19092"
    #: KRaft controller listener of the local single-node broker.
    kafka_controller_port: int = 19093
    kafka_version: str = "4.1.2"
    kafka_heap: str = "512m"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    #: How long a bridge or CLI client waits at start for a first broker before it gives up
    #: with ``service.unavailable`` (exit 4); kafka-python's own default is 30 s.
    kafka_bootstrap_timeout_s: float = Field(5.0, gt=0, le=300)
    topic_tasks: str = "sonic-video-tasks"
    topic_dlq: str = "sonic-video-tasks-dlq"
    topic_control: str = "sonic-video-control"
    topic_status: str = "sonic-video-status"
    topic_partitions: int = 16
    topic_replication: int = 1
    consumer_group: str = "sonic-bridge"
    #: A message larger than this is rejected to the DLQ (media travels by reference).
    max_message_bytes: int = 64 * 1024

    # --- Redis (Celery broker: a bounded in-flight window only) ------------------------
    redis_host: str = "127.0.0.1"
    redis_port: int = 16379
    redis_db: int = 0
    redis_password: SecretStr | None = None
    redis_maxmemory: str = "256mb"
    #: Seconds before Redis redelivers an unacknowledged task; longer than any gpu task.
    visibility_timeout_s: int = 6 * 3600

    # --- PostgreSQL (the record) --------------------------------------------------------
    pg_host: str = "127.0.0.1"
    pg_port: int = 15432
    pg_user: str = "sonic"
    pg_password: SecretStr = SecretStr("sonic")
    pg_database: str = "sonic"
    pg_pool_size: int = 5
    #: A pooled connection idle this long (seconds) or longer is pinged before use;
    #: 0 pings at every checkout (see :mod:`pipeline.state.db`).
    pg_ping_idle_s: float = Field(default=1.0, ge=0)

    # --- Celery ---------------------------------------------------------------------------
    #: Soft/hard time limits per stage, seconds (the gpu stage gets the long ones).
    time_limit_s: int = 600
    gpu_time_limit_s: int = 3 * 3600
    #: The gpu stage's budget for one job: base + per second of audio, capped by
    #: ``gpu_time_limit_s``; past it the render stops with ``stage.timeout``.
    gpu_budget_base_s: float = 600.0
    gpu_budget_per_audio_s: float = 60.0
    worker_concurrency: int = 2
    #: Pool for the gpu queue. prefork with one child: the parent never touches CUDA, the
    #: child loads the model in ``worker_process_init`` and time limits are enforced.
    gpu_pool: Literal["solo", "threads", "prefork"] = "prefork"
    gpu_concurrency: int = 1

    # --- Flower -----------------------------------------------------------------------
    flower_port: int = 15555
    flower_user: str = "admin"
    flower_password: SecretStr = SecretStr("change-me")

    # --- scheduler (the dispatcher: Postgres backlog -> Celery window) ------------------------
    #: Admitted jobs not yet dispatched (received + waiting) at most; above it the bridge
    #: pauses its partitions and the backlog stays in Kafka.
    backlog_max: int = 1_000_000
    #: The bridge resumes its partitions below this.
    backlog_low: int = 900_000
    #: gpu workers the fleet runs (slots), and jobs each may have dispatched ahead of its
    #: gpu (rendering, preprocessed and waiting, preprocessing): the dispatch window is
    #: their product, so a job chosen now reaches a gpu within about one render.
    gpu_slots: int = 1
    dispatch_lead: int = 3
    #: Jobs one tenant may have queued or running at once.
    tenant_inflight_max: int = 1000
    #: Tenants' weights (``a=2,b=0.5``); others weigh 1. The dispatcher serves the tenant
    #: with the least work in flight per weight.
    tenant_weights: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    #: Seconds a job waits for a ``depends_on`` id that was never admitted before it fails
    #: with ``dependency.unknown``.
    dependency_wait_s: float = 3600.0
    #: Seconds the dispatcher sleeps when it has nothing to do.
    dispatch_idle_s: float = 0.1

    # --- bridge ------------------------------------------------------------------------
    #: Most records handed to the admission steps per poll.
    bridge_batch_max: int = 1000
    bridge_poll_timeout_ms: int = 200
    #: Stop (exit 5) when more than this share of recent messages is invalid.
    invalid_ratio_max: float = 0.5
    #: How many recent messages the invalid share is measured over.
    invalid_window: int = 1000
    #: Seconds between reconciler sweeps (one bridge sweeps at a time).
    reconcile_interval_s: float = 10.0
    #: Seconds between in-flight re-counts in Postgres.
    inflight_refresh_s: float = 0.2
    #: Seconds between consumer-lag updates.
    lag_interval_s: float = 5.0
    #: How soon a dead bridge's partitions move to another member.
    kafka_session_timeout_ms: int = 10_000
    #: Static group membership id (KIP-345), e.g. the pod name; unset: dynamic.
    kafka_group_instance_id: str | None = None
    #: The longest wait between two tries to reach a broker (kafka-python's own default,
    #: 30 s, left clients idle for up to 30 s after a restarted broker was back).
    kafka_reconnect_backoff_max_ms: int = Field(1000, ge=50)

    # --- stages: leases, heartbeats, reconciler ---------------------------------------
    #: A stage's lease expires this long after its last heartbeat.
    lease_ttl_s: int = 120
    heartbeat_interval_s: int = 15
    max_attempts: int = 3
    #: Seconds a stage retries its closing database writes in place (a PostgreSQL restart)
    #: before handing its message back to the broker for a retry with backoff.
    db_retry_s: float = 30.0
    #: Seconds a job may sit with no lease and no progress (its message in the Redis window,
    #: or between two stages) before the reconciler sends its stage again. Keep it above
    #: the longest wait in the window and the longest retry backoff (600 s).
    stalled_after_s: int = 900

    # --- inputs (fetched by reference, never inline) -------------------------------------
    #: Local roots a path or file:// URL may point into (``path1,path2``).
    input_roots: Annotated[list[Path], NoDecode] = Field(default_factory=lambda: [Path("/uploads")])
    allowed_schemes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["file", "s3", "http", "https"]
    )
    #: Hosts http(s) inputs may come from (``a.example.com,b.example.com``); empty: none.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Allow http(s) inputs that resolve to loopback/private ranges (off: no SSRF).
    allow_private_networks: bool = False
    max_input_bytes: int = 200 * 1024 * 1024
    fetch_timeout_s: float = 30.0
    #: Seconds a whole http(s) input download may take, redirects included (a server
    #: trickling bytes inside the per-read ``fetch_timeout_s`` is cut here, retried later).
    fetch_total_s: float = Field(300.0, gt=0)
    max_audio_s: float = 600.0
    #: Buckets s3:// inputs may name (``bucket`` or ``bucket/prefix``); empty: none. The
    #: results bucket is never implied: it holds every tenant's videos.
    input_buckets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: An image declaring more pixels than this is refused (image.too_large), undecoded.
    max_image_pixels: int = 50_000_000

    # --- media ------------------------------------------------------------------------------
    #: Shared work directory for stage artifacts (default: ``<state_dir>/work``).
    work_dir: Path | None = None
    #: A final job's work dir is swept once nothing in it changed for this long (seconds);
    #: the upload stage and a job failing for good remove theirs at once.
    workdir_retention_s: int = 3600
    #: Seconds between work-dir sweeps where a long-running process runs them.
    housekeeping_interval_s: float = 300.0
    ffmpeg_bin: str = "ffmpeg"
    ffprobe_bin: str = "ffprobe"
    crf: int = 18
    fps: int = 25

    # --- engines ----------------------------------------------------------------------------
    default_engine: str = "builtin"
    #: "auto" picks CUDA when present, else CPU.
    device: str = "auto"
    sonic_repo: Path | None = None
    sonic_weights: Path | None = None
    #: Frames rendered per batch; 0 picks per device (4 on CPU, where larger batches
    #: measured slower, 16 on CUDA).
    engine_batch_frames: int = 0
    #: How the gpu stage hands its frames to encode (pipeline/media/handoff.py): ``h264``
    #: (lossless yuv420p H.264, ~12x fewer bytes; the same final video) or ``raw`` rgb24.
    handoff: Literal["h264", "raw"] = "h264"
    #: Benchmarks only: register the ``bench`` engine (no render; sleeps this many seconds
    #: and hands over one black frame). Off: a job naming it gets ``engine.unavailable``.
    bench_engine: bool = False
    bench_engine_sleep_s: float = Field(0.0, ge=0)
    #: ...plus this many seconds per inference step of the job (a gpu stage whose length
    #: each job chooses: the scheduler's end-to-end tests).
    bench_engine_step_s: float = Field(0.0, ge=0)
    #: The ``remote`` engine: an HTTP inference service (``{url}/v1/render``; README)...
    remote_url: str | None = None
    #: ...called with these API keys (``k1,k2`` or a JSON list of ``{"key", "weight",
    #: "rate"}``; pipeline/engines/credentials/keys.py), a pool shared in Redis...
    remote_keys: SecretStr | None = None
    #: ...each key within these limits unless it names its own (``limits`` notation)...
    remote_rate: str = "5/second;120/minute"
    #: ...picked by this strategy...
    remote_strategy: Literal["least_loaded", "round_robin", "weighted"] = "least_loaded"
    #: ...with at most this many calls in flight over every key and worker...
    remote_max_concurrent: int = Field(50, ge=1)
    #: ...a key answered 429/5xx (or no answer) cooling down from min, doubling per fault,
    #: to max seconds (never shorter than its Retry-After)...
    remote_cooldown_min_s: float = Field(1.0, gt=0)
    remote_cooldown_max_s: float = Field(300.0, gt=0)
    #: ...one call's deadline, seconds, and the largest answer accepted, bytes.
    remote_timeout_s: float = Field(600.0, gt=0)
    remote_max_response_bytes: int = Field(4 * 1024**3, gt=0)

    # --- object storage -----------------------------------------------------------------------
    storage_backend: Literal["local", "s3"] = "local"
    #: Directory of the local object store (default: ``<state_dir>/objects``).
    storage_dir: Path | None = None
    #: S3-compatible endpoint (MinIO, OSS, S3); unset means AWS's own.
    s3_endpoint: str | None = None
    #: Port of the local MinIO that ``make up`` starts.
    s3_port: int = 19000
    s3_region: str = "us-east-1"
    s3_bucket: str = "sonic-videos"
    s3_access_key: SecretStr | None = SecretStr("sonicdev")
    s3_secret_key: SecretStr | None = SecretStr("sonicdev-secret")
    #: Public (CDN) base URL for results; when unset, a presigned URL is returned.
    public_base_url: str | None = None
    presign_ttl_s: int = 7 * 24 * 3600

    # --- callbacks (Standard Webhooks) ----------------------------------------------------------
    webhook_secret: SecretStr = SecretStr("whsec_c29uaWMtcGlwZWxpbmUtZGV2LXNlY3JldA==")
    webhook_timeout_s: float = 10.0
    #: Give up retrying a callback this long after its first attempt.
    webhook_max_age_s: int = 24 * 3600
    #: Flow control per destination (scheme, host, port), shared by all io workers through
    #: Redis: at most this many requests in any window (``limits`` notation, "N/second")...
    webhook_rate: str = "20/second"
    #: ...a circuit breaker that opens after this many consecutive failures (timeouts,
    #: connection errors, 429, 5xx)...
    webhook_breaker_failures: int = Field(5, ge=1)
    #: ...stays open this long (seconds), then half-opens...
    webhook_breaker_open_s: float = Field(30.0, gt=0)
    #: ...and lets this many trial requests through per opening (first success closes).
    webhook_breaker_trials: int = Field(1, ge=1)

    # --- status events (outbox -> Kafka SONIC_TOPIC_STATUS, latest in Redis) -----------------------
    #: Seconds a job's latest status stays cached in Redis after its last event (the
    #: broker's Redis: a final job's entry, ~0.5 KB, lives this long).
    status_cache_ttl_s: int = Field(3600, ge=1)
    #: Seconds published events stay in the outbox (Server-Sent Events resume from them);
    #: a job's newest event is always kept.
    status_retention_s: float = Field(24 * 3600.0, ge=0)
    #: Seconds an event may wait for Kafka: older unpublished events of every topic (one
    #: no bridge serves any more, or an outage longer than this) are dropped by any
    #: relay's prune, counted in sonic_status_expired_total; a job's newest is kept.
    status_unpublished_max_age_s: float = Field(7 * 24 * 3600.0, gt=0)
    #: Events the relay sends to Kafka per batch.
    status_relay_batch: int = Field(500, ge=1)

    # --- metrics ----------------------------------------------------------------------------------
    metrics_port: int = 19100
    #: Tenants with gauges of their own in the scheduler's backlog metrics (the rest are
    #: summed as tenant="__other__"); 5x this many get a gpu-seconds series.
    metrics_top_tenants: int = Field(20, ge=1)
    #: Seconds between the scheduler's scans of the backlog rows (per priority, oldest).
    metrics_scan_s: float = Field(10.0, gt=0)

    # --- HTTP service (``sonic-pipeline serve``, pipeline/http) -----------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(18080, ge=1, le=65535)
    #: Bearer tokens per tenant: ``tenantA:token1,tenantB:token2``; the tenant ``*`` is an
    #: operator who sees every tenant's jobs. Unset: the service refuses to start.
    api_tokens: SecretStr | None = None
    #: Key signing the browser's session cookie (unset: a random key per process, so each
    #: replica's cookies are its own).
    api_session_secret: SecretStr | None = None
    #: Lifetime of a session cookie, seconds.
    api_session_ttl_s: int = Field(3600, gt=0)
    #: Bucket the service stores uploads in (``s3`` backend); it must be in
    #: ``input_buckets`` so the workers may fetch from it.
    upload_bucket: str = "sonic-uploads"

    @field_validator("input_roots", "allowed_schemes", "allowed_hosts", "input_buckets",
                     mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("webhook_rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        from limits import parse  # the notation of pipeline.webhooks.ratelimit

        try:
            parse(value)
        except ValueError:
            raise ValueError(f"not a rate such as '20/second': {value!r}") from None
        return value

    @field_validator("tenant_weights", mode="before")
    @classmethod
    def _weights(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError("SONIC_TENANT_WEIGHTS is tenant=weight[,tenant=weight...]")
            return {name.strip(): float(weight) for name, weight in pairs}
        return value

    @property
    def dispatch_window(self) -> int:
        """Jobs dispatched and not yet past the gpu stage, at most."""
        return max(1, self.gpu_slots * self.dispatch_lead)

    @field_validator("state_dir", "work_dir", "storage_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @model_validator(mode="after")
    def _derived_dirs(self) -> "Settings":
        # Frozen model: fill the defaults that depend on state_dir once, here.
        if self.work_dir is None:
            object.__setattr__(self, "work_dir", self.state_dir / "work")
        if self.storage_dir is None:
            object.__setattr__(self, "storage_dir", self.state_dir / "objects")
        if self.backlog_low >= self.backlog_max:
            raise ValueError("SONIC_BACKLOG_LOW must be below SONIC_BACKLOG_MAX")
        return self

    @model_validator(mode="after")
    def _kafka_sasl(self) -> "Settings":
        # A SASL login with a part missing or empty is refused here, by name: at the broker
        # it only ends in a bootstrap timeout.
        if not self.kafka_security_protocol.startswith("SASL_"):
            return self
        if not self.kafka_sasl_mechanism:
            raise ValueError(f"SONIC_KAFKA_SASL_MECHANISM must be set with "
                             f"SONIC_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol}")
        if self.kafka_sasl_mechanism.upper() in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            password = self.kafka_sasl_password
            empty = [name for name, value in (
                ("SONIC_KAFKA_SASL_USERNAME", self.kafka_sasl_username),
                ("SONIC_KAFKA_SASL_PASSWORD",
                 password.get_secret_value() if password is not None else None))
                if not value]
            if empty:
                raise ValueError(f"{' and '.join(empty)} must be set and not empty for "
                                 f"SASL {self.kafka_sasl_mechanism}")
        return self

    # --- derived ----------------------------------------------------------------------
    @property
    def database_url(self) -> str:
        password = quote(self.pg_password.get_secret_value(), safe="")
        return (
            f"postgresql+psycopg2://{quote(self.pg_user, safe='')}:{password}"
            f"@{self.pg_host}:{self.pg_port}/{self.pg_database}"
        )

    @property
    def broker_url(self) -> str:
        auth = ""
        if self.redis_password is not None:
            auth = f":{quote(self.redis_password.get_secret_value(), safe='')}@"
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"

    def redacted(self) -> dict[str, object]:
        """The settings as a dict safe to print (secrets masked)."""
        out: dict[str, object] = {}
        for name, value in self.model_dump().items():
            if isinstance(getattr(self, name), SecretStr):
                value = "**********"
            out[name] = value
        return out

    def kafka_client_config(self) -> dict[str, object]:
        """Connection and security options shared by every kafka-python client we create."""
        config: dict[str, object] = {
            "bootstrap_servers": self.kafka_bootstrap.split(","),
            "security_protocol": self.kafka_security_protocol,
            "reconnect_backoff_max_ms": self.kafka_reconnect_backoff_max_ms,
        }
        if self.kafka_sasl_mechanism:
            config["sasl_mechanism"] = self.kafka_sasl_mechanism
            config["sasl_plain_username"] = self.kafka_sasl_username
            if self.kafka_sasl_password is not None:
                config["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        for key in ("cafile", "certfile", "keyfile"):
            value = getattr(self, f"kafka_ssl_{key}")
            if value:
                config[f"ssl_{key}"] = value
        return config


def describe_error(exc: ValidationError) -> str:
    """One line for a setting that does not parse: ``config.invalid: SONIC_NAME: why``."""
    first = exc.errors()[0]
    field = "SONIC_" + str(first["loc"][0]).upper() if first["loc"] else "settings"
    return f"config.invalid: {field}: {first['msg']}"


def load(**overrides: object) -> Settings:
    """Build the settings once at an entry point (environment, then ``overrides``)."""
    return Settings(**overrides)  # type: ignore[arg-type]

"""The service assembled: resources built once from the settings, routes, the page.

    app = create_app(settings)     # raises ConfigError for missing/malformed settings

Resources (one per process): a pooled PostgreSQL engine, a Redis client, the Kafka
producer, the upload store and the video store. ``/healthz`` and ``/metrics`` need no
token (probes and scrapers); everything under ``/v1`` does. The page is static files
(``static/``) served at ``/``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import redis
from fastapi import FastAPI
from fastapi.exceptions import HTTPException
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine

from pipeline.errors import PipelineError
from pipeline.settings import Settings
from pipeline.state.db import make_db_engine
from pipeline.storage import ObjectStore, get_store

from . import api, errors, health
from .auth import Authenticator
from .errors import answer
from .kafka import Kafka
from .metrics import RequestMetrics
from .store import TaskStore
from .uploads import UploadStore

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
#: Multipart overhead allowed above the two parts' cap.
FORM_OVERHEAD = 1024 * 1024
#: The page's Content-Security-Policy: its own scripts only; the video may come from the
#: object store's presigned URL (another origin).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "media-src 'self' http: https:; connect-src 'self'; frame-ancestors 'none'; "
       "base-uri 'none'; form-action 'self'")


@dataclass
class Resources:
    settings: Settings
    auth: Authenticator
    db_engine: Engine
    redis: redis.Redis
    kafka: Kafka
    uploads: UploadStore
    videos: ObjectStore
    store: TaskStore
    pool: ThreadPoolExecutor

    @classmethod
    def build(cls, settings: Settings) -> Resources:
        auth = Authenticator(settings)
        uploads = UploadStore(settings)
        # Presigned video links live minutes, not the callback's days.
        videos = get_store(settings.model_copy(update={"presign_ttl_s": 900}))
        db_engine = make_db_engine(settings)
        client = redis.Redis(
            host=settings.redis_host, port=settings.redis_port, db=settings.redis_db,
            password=(settings.redis_password.get_secret_value()
                      if settings.redis_password else None),
            socket_timeout=2, socket_connect_timeout=2)
        return cls(settings, auth, db_engine, client, Kafka(settings), uploads, videos,
                   TaskStore(db_engine, client), ThreadPoolExecutor(8, "health"))

    def close(self) -> None:
        self.kafka.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.redis.close()
        self.db_engine.dispose()


class BodyLimit:
    """ASGI middleware: a POST body over ``limit`` bytes is answered 413
    ``input.too_large`` (at once from its Content-Length, else when the count passes it)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        message = f"the request body is over {self.limit} bytes (two parts of at most " \
                  f"SONIC_MAX_INPUT_BYTES)"
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await answer(413, "input.too_large", message)(scope, receive, send)
            return
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            received = await receive()
            seen += len(received.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, message)
            return received

        await self.app(scope, counted, send)


def create_app(settings: Settings) -> FastAPI:
    resources = Resources.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await anyio.to_thread.run_sync(resources.uploads.ensure)
        except PipelineError as exc:  # the store may come later; uploads fail till then
            log.warning("upload store not ready: %s", exc)
        yield
        resources.close()

    app = FastAPI(title="sonic-pipeline", version="1", lifespan=lifespan,
                  description="Portrait + speech in, talking-head video out. Authenticate "
                  "with `Authorization: Bearer <token>`; errors are `{\"error\": {\"code\", "
                  "\"message\"}}` with the codes of the README.")
    app.state.resources = resources
    errors.install(app)
    app.include_router(api.router)

    @app.get("/healthz", summary="PostgreSQL, Redis and Kafka reachable (503 names the "
             "failing ones)", tags=["ops"])
    async def healthz() -> JSONResponse:
        status, body = await anyio.to_thread.run_sync(
            health.check, resources.db_engine, resources.redis, resources.kafka,
            resources.pool)
        return JSONResponse(body, status_code=status)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={
            "Content-Security-Policy": CSP, "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/metrics", summary="Prometheus metrics", tags=["ops"],
             response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, limit=2 * settings.max_input_bytes + FORM_OVERHEAD)
    app.add_middleware(RequestMetrics)
    return app

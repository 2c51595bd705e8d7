"""Error answers: ``{"error": {"code": ..., "message": ...}}`` with the project's codes.

``ApiError(status, code, message)`` is raised by the routes; a :class:`PipelineError` that
escapes a route is answered by its code (:data:`STATUS_OF` gives the HTTP status); FastAPI's
own request validation becomes ``message.missing_field`` / ``message.wrong_type``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

#: pydantic's error types for a number outside its bounds (message.out_of_range, as the
#: door says for a knob out of range).
_OUT_OF_RANGE = frozenset({"greater_than", "greater_than_equal", "less_than",
                           "less_than_equal"})

#: HTTP status per error code (prefix match on the part before the dot as a fallback).
STATUS_OF: dict[str, int] = {
    "auth.unauthorized": 401,
    "task.not_found": 404,
    "task.not_ready": 409,
    "input.too_large": 413,
    "image.too_large": 413,
    "message.too_large": 413,
    "service.unavailable": 503,
    "storage.unavailable": 503,
    "storage.misconfigured": 503,
    "transport.error": 503,
    "transport.timeout": 503,
    "config.invalid": 500,
    "internal.error": 500,
}
_BY_PREFIX = {"message": 400, "input": 400, "image": 422, "audio": 422}


class ApiError(Exception):
    """An answer other than success: ``status`` (HTTP), ``code`` (CODES), ``message``."""

    def __init__(self, status: int, code: str, message: str, **headers: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.headers = status, code, message, headers


def status_of(code: str) -> int:
    return STATUS_OF.get(code) or _BY_PREFIX.get(code.split(".", 1)[0], 400)


def body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def answer(status: int, code: str, message: str,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body(code, message), status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into the JSON body above."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return answer(exc.status, exc.code, exc.message, exc.headers or None)

    @app.exception_handler(PipelineError)
    async def _pipeline(request: Request, exc: PipelineError) -> JSONResponse:
        status = status_of(exc.code)
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return answer(status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        if first.get("type") == "missing":
            return answer(400, "message.missing_field", f"field {where!r} is required")
        if first.get("type") in _OUT_OF_RANGE:  # the right type, outside its bounds
            return answer(400, "message.out_of_range", f"field {where!r}: {first.get('msg')}")
        return answer(400, "message.wrong_type", f"field {where!r}: {first.get('msg')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "http.not_found", 413: "input.too_large"}.get(exc.status_code,
                                                                    "http.error")
        return answer(exc.status_code, code, str(exc.detail))

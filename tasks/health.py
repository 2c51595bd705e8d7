"""Maintenance tasks: a ping that proves a worker consumes a queue end to end."""

from __future__ import annotations

import os
import socket

from pipeline.celery import app


@app.task(name="sonic.ping", ignore_result=False, acks_late=False)
def ping(token: str) -> dict[str, object]:
    """Echo ``token`` with the worker's host and pid."""
    return {"token": token, "host": socket.gethostname(), "pid": os.getpid()}

"""``sonic-pipeline serve``: the HTTP service under uvicorn, in this process.

    run(host, port)       blocks until SIGINT/SIGTERM (uvicorn's graceful shutdown: open
                          requests finish, event streams are closed)
"""

from __future__ import annotations

import logging

import uvicorn

from pipeline.settings import Settings, load

from .app import create_app


def run(host: str, port: int, settings: Settings | None = None) -> None:
    """Serve the API and the page on ``host:port`` (settings read once, here, if not given).

    Raises :class:`~pipeline.errors.ConfigError` for missing or malformed settings
    (``SONIC_API_TOKENS``, the upload bucket) before binding the port.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    app = create_app(settings or load())
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=False,
                server_header=False, timeout_graceful_shutdown=5)

"""``python -m pipeline.http [--host H] [--port P]``: the HTTP service (``serve.run``).

Exit codes: 0 stopped, 3 configuration error (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from pipeline.errors import PipelineError
from pipeline.settings import describe_error, load

from .serve import run


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load()
    except ValidationError as exc:
        print(f"sonic-pipeline serve: {describe_error(exc)}", file=sys.stderr)
        return 3
    parser = argparse.ArgumentParser(prog="python -m pipeline.http")
    parser.add_argument("--host", default=settings.api_host)
    parser.add_argument("--port", type=_port, default=settings.api_port)
    args = parser.parse_args(argv)
    try:
        run(args.host, args.port, settings)
    except PipelineError as exc:
        print(f"sonic-pipeline serve: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def _port(text: str) -> int:
    """A TCP port number (1 to 65535), for argparse."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1 to 65535)")
    return port


if __name__ == "__main__":
    sys.exit(main())

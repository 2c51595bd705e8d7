"""A service the CLI cannot reach is one line naming it and the fix, exit 4, no traceback:
each service (PostgreSQL, Kafka, Redis, the object store) behind a closed port, through
several verbs each."""

from __future__ import annotations

import pytest

from tests.cli.conftest import CliStack
from tests.support.server import free_port

PG = ["status x", "list", "events x", "cancel x", "retry x", "show x", "top --once",
      "db upgrade", "submit --image https://h/a.jpg --audio https://h/a.wav --wait"]
KAFKA = ["submit --image https://h/a.jpg --audio https://h/a.wav", "dlq list",
         "dlq replay --dry-run", "topics create", "top --json"]


def one_line(result) -> str:
    """The error line; ``submit --wait`` first says where the job went (it was sent)."""
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    if lines[0].startswith("submitted "):
        lines = lines[1:]
    line, = lines
    return line


@pytest.mark.parametrize("verb", PG)
def test_postgres_closed(cli_stack: CliStack, verb: str) -> None:
    port = free_port()
    result = cli_stack.invoke(*verb.split(), SONIC_PG_PORT=str(port))
    assert result.exit_code == 4, result.output
    line = one_line(result)
    assert line.startswith("sonic-pipeline: service.unavailable: postgres: cannot connect to "
                           f"127.0.0.1:{port}; start it with `make up`"), line


@pytest.mark.parametrize("verb", KAFKA)
def test_kafka_closed(cli_stack: CliStack, verb: str) -> None:
    where = f"127.0.0.1:{free_port()}"
    result = cli_stack.invoke(*verb.split(), SONIC_KAFKA_BOOTSTRAP=where)
    assert result.exit_code == 4, result.output
    assert one_line(result) == (f"sonic-pipeline: service.unavailable: kafka: cannot connect "
                                f"to {where}; start it with `make up` or set "
                                "SONIC_KAFKA_BOOTSTRAP")


@pytest.mark.parametrize("verb", ["top --once", "credentials"])
def test_redis_closed(cli_stack: CliStack, verb: str) -> None:
    port = free_port()
    result = cli_stack.invoke(*verb.split(), SONIC_REDIS_PORT=str(port),
                              SONIC_REMOTE_KEYS="k1,k2")
    assert result.exit_code == 4, result.output
    line = one_line(result)
    assert line.startswith(f"sonic-pipeline: service.unavailable: redis: cannot reach "
                           f"127.0.0.1:{port}"), line
    assert "SONIC_REDIS_PORT" in line and "k1" not in line


@pytest.mark.parametrize("role", ["--image", "--audio"])
def test_object_store_closed(cli_stack: CliStack, role: str) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    files = {"--image": str(cli_stack.face), "--audio": str(cli_stack.speech)}
    args = ["submit", *[x for k, v in files.items()
                        for x in (k, v if k == role else f"https://h/{k[2:]}")]]
    result = cli_stack.invoke(*args, SONIC_S3_ENDPOINT=endpoint)
    assert result.exit_code == 4, result.output
    assert one_line(result) == (f"sonic-pipeline: service.unavailable: object store: cannot "
                                f"connect to {endpoint} (bucket sonic-cli-results); start it "
                                "with `make up` or set SONIC_S3_ENDPOINT")

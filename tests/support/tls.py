"""A throwaway self-signed certificate for TLS tests (openssl, argument list)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(directory: Path, hostname: str, ip: str | None = None) -> tuple[Path, Path]:
    """(certificate, key) for ``hostname`` (and the address ``ip`` when given), valid one
    day, written under ``directory``; the key is unencrypted PKCS#8 PEM."""
    cert, key = directory / f"{hostname}.crt", directory / f"{hostname}.key"
    argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "1", "-subj", f"/CN={hostname}",
            "-addext", f"subjectAltName=DNS:{hostname}" + (f",IP:{ip}" if ip else ""),
            "-keyout", str(key), "-out", str(cert)]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl failed ({result.returncode}): {result.stderr[-300:]}")
    return cert, key

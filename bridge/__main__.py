"""``python -m bridge``: the same as ``sonic-pipeline bridge`` (settings from SONIC_*)."""

from __future__ import annotations

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["bridge"]))

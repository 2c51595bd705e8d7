"""``python -m bridge``: the bridge (settings from SONIC_*); ``sonic-pipeline bridge`` execs
this."""

from __future__ import annotations

import sys

from bridge.main import main

if __name__ == "__main__":
    sys.exit(main())

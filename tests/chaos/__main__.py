"""``python -m tests.chaos``: the fault scenarios' runner (:mod:`tests.chaos.runner`)."""

from __future__ import annotations

import sys

from tests.chaos.runner import main

if __name__ == "__main__":
    sys.exit(main())

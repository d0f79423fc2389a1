"""`python -m controller.evaluate`: see `controller.evaluate.cli`."""

from __future__ import annotations

import sys

from controller.evaluate.cli import main

if __name__ == "__main__":
    sys.exit(main())

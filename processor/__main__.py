"""``python -m processor`` runs the ``tiktok-events`` command line."""

from __future__ import annotations

import sys

from processor.cli import main

if __name__ == "__main__":
    sys.exit(main())

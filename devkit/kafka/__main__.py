"""``python -m devkit.kafka``: the command line of devkit.kafka.cli."""

from __future__ import annotations

import sys

from devkit.kafka.cli import main

sys.exit(main())

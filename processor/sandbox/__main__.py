"""``python -m processor.sandbox``: the sandbox CLI without the main entry point."""

from __future__ import annotations

from processor.sandbox.cli import main

raise SystemExit(main())

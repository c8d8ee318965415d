"""Kafka clickstream → TikTok Events API processor.

The package is organised by responsibility, data flowing one way:
source → decode → filter → map → validate → batch → send → ack → commit.
Nothing runs at import time.
"""

from __future__ import annotations

__version__ = "0.1.0"

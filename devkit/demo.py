"""``make demo``: what the processor makes of the example clickstream.

Checks config/example.yaml, then shows the request body every example record of
``schemas/clickstream/examples`` would become (or why it is filtered or rejected),
judged at the examples' own time.
"""

from __future__ import annotations

import sys
from pathlib import Path

from processor.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "example.yaml"
EXAMPLES = ROOT / "schemas" / "clickstream" / "examples"
TOPICS = {
    "page_view.v1": "web.pageviews",
    "button_click.v1": "web.clicks",
    "sign_up.v1": "web.signups",
    "form_submit.v1": "web.forms",
}
EXAMPLES_TIME = "2026-01-01T00:10:00Z"


def main() -> int:
    if cli(["check-config", str(CONFIG)]) != 0:
        return 1
    for folder, topic in TOPICS.items():
        for example in sorted((EXAMPLES / folder).glob("*.json")):
            print(f"\n== {topic}: {example.relative_to(ROOT)}")
            args = ["preview", "--config", str(CONFIG), "--topic", topic, "--now", EXAMPLES_TIME]
            if cli([*args, str(example)]) != 0:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

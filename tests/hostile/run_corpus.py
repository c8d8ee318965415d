"""``tiktok-events check-config`` on many files in one process, for test_configs.py.

Reads a JSON list of ``{"path": …, "env": {…}}`` on stdin and, for each, runs
:func:`processor.cli.main` as the command line would, with only that environment
(no KAFKA_*/TIKTOK_* variables of the caller), writing one JSON line per file:
``path``, ``code`` (the exit status, or "raised") and what went to stdout and
stderr. An exception escaping ``main`` is written to stderr as its traceback, so
the test sees it exactly as a user would.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from typing import Any

from processor.cli import main


def check_config(path: str, env: dict[str, str]) -> dict[str, Any]:
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("KAFKA_", "TIKTOK_", "METRICS_")):
            del os.environ[name]
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["check-config", path])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int | None) else str(exc.code)
            except BaseException:
                traceback.print_exc()
                code = "raised"
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {"path": path, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


if __name__ == "__main__":
    for case in json.load(sys.stdin):
        print(json.dumps(check_config(case["path"], case["env"])), flush=True)

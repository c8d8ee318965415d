"""Topic mappings: a record in, TikTok events out, compiled once at start-up.

- :mod:`~processor.mapping.paths`: field paths → getters
- :mod:`~processor.mapping.rules`: the ``when`` filter language → predicates
- :mod:`~processor.mapping.values`: value specifications → getters
- :mod:`~processor.mapping.coerce`: per-target coercion and PII hashing
- :mod:`~processor.mapping.compiler`: a mapping → :class:`CompiledMapping`

Everything here is pure: no I/O, no clock, no globals that change.
"""

from __future__ import annotations

from processor.mapping.compiler import CompiledMapping, MappedEvent, compile_mappings

__all__ = ["CompiledMapping", "MappedEvent", "compile_mappings"]

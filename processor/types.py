"""Small value types shared across the pipeline."""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """Where a record was given up on; the ``stage`` header of its dead letter."""

    DECODE = "decode"
    INPUT_SCHEMA = "input-schema"
    MAPPING = "mapping"
    STALE = "stale"
    OUTPUT_SCHEMA = "output-schema"
    API = "api"


#: Every stage, in pipeline order.
STAGES = tuple(Stage)

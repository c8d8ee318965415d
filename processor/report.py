"""The counts of one run: printed by ``replay-dlq`` and logged when a member stops."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunReport:
    records: int = 0
    filtered: int = 0
    events_mapped: int = 0
    events_accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    #: Records skipped as copies (replay-dlq: a dead letter written twice).
    duplicates: int = 0

    def reject(self, stage: str) -> None:
        # Plain text keys: a Stage member would not survive JSON encoding of the summary.
        name = str(stage)
        self.rejected[name] = self.rejected.get(name, 0) + 1

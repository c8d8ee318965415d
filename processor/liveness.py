"""Whether every assigned partition with lag makes progress: the stall watch.

A partition *progresses* when its fetch position or its done watermark (what the
member may commit) moves, or when it has no lag at all. One that has lag and has not
progressed for ``stall_timeout_s`` is *stalled*: ``/readyz`` fails naming it, and
``tiktok_events_partition_stalled_seconds`` (how long it has not progressed while it
has lag) feeds the ``TikTokEventsPartitionStalled`` alert.

Nothing here trusts the member's own idea of its partitions' state (paused or not,
fetching or not): the watch looks only at numbers the broker and the offset trackers
give, so a partition stuck for a reason nobody foresaw still shows.

Not thread-safe: owned by the poll thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from processor.kafka.api import TopicPartition


class Stall(NamedTuple):
    """A partition with lag that has not progressed for ``seconds``."""

    tp: TopicPartition
    lag: int
    seconds: float


class _Seen(NamedTuple):
    mark: tuple[int | None, int | None]  # (fetch position, done watermark)
    since: float  # when it last progressed


class StallWatch:
    """How long each assigned partition with lag has gone without progress."""

    def __init__(self, stall_timeout_s: float) -> None:
        if not stall_timeout_s > 0:
            raise ValueError("stall_timeout_s must be above 0")
        self.stall_timeout_s = stall_timeout_s
        self._seen: dict[TopicPartition, _Seen] = {}
        self._stalled: dict[TopicPartition, Stall] = {}

    def assigned(self, tp: TopicPartition, now: float) -> None:
        """A partition was assigned: its clock starts now."""
        self._seen[tp] = _Seen((None, None), now)
        self._stalled.pop(tp, None)

    def forget(self, tp: TopicPartition) -> None:
        self._seen.pop(tp, None)
        self._stalled.pop(tp, None)

    def observe(
        self,
        lags: Mapping[TopicPartition, int],
        positions: Mapping[TopicPartition, int | None],
        watermarks: Mapping[TopicPartition, int | None],
        now: float,
    ) -> dict[TopicPartition, float]:
        """Take one reading; returns every watched partition's seconds without progress
        while it has lag (0.0 for those progressing, without lag, or whose lag is not
        known yet). An unknown lag does not restart the clock: once it is known, the
        time it was unknown counts too."""
        out: dict[TopicPartition, float] = {}
        stalled: dict[TopicPartition, Stall] = {}
        for tp, seen in list(self._seen.items()):
            lag = lags.get(tp)
            new = (positions.get(tp), watermarks.get(tp))
            # A number seen for the first time is a baseline, not progress.
            moved = any(
                o is not None and n is not None and n != o
                for o, n in zip(seen.mark, new, strict=True)
            )
            mark = (
                new[0] if new[0] is not None else seen.mark[0],
                new[1] if new[1] is not None else seen.mark[1],
            )
            since = now if lag == 0 or moved else seen.since
            self._seen[tp] = _Seen(mark, since)
            idle = now - since if lag else 0.0
            out[tp] = idle
            if lag and idle >= self.stall_timeout_s:
                stalled[tp] = Stall(tp, lag, idle)
        # Replaced whole, never changed in place: /readyz reads it from another thread.
        self._stalled = stalled
        return out

    def stalled(self) -> list[Stall]:
        """The partitions stalled at the last reading, longest first."""
        return sorted(self._stalled.values(), key=lambda stall: -stall.seconds)

    def describe(self) -> str | None:
        """For ``/readyz``: the stalled partitions, or None."""
        stalls = self.stalled()
        if not stalls:
            return None
        worst = stalls[0]
        more = f" (and {len(stalls) - 1} more)" if len(stalls) > 1 else ""
        return (
            f"partition {worst.tp.topic}[{worst.tp.partition}] has lag {worst.lag} and made "
            f"no progress for {worst.seconds:.0f}s{more}"
        )

"""Time, injected: a clock to read, a timescale that says how long a "day" is, elapsed time.

Pending windows, rotation periods and expiries are counted in days. ``kms-operator run
--day-seconds N`` shortens the day so tests watch real deletions happen (DESIGN.md section 8).

The wall clock can be stepped (NTP, a wrong host clock, a restored VM), so destruction, the one
act that cannot be undone, also waits on elapsed time (:mod:`kms_operator.keys.elapsed`), read
from the monotonic clock.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""

    def monotonic_ns(self) -> int:
        """A reading of a clock that never steps back or jumps (``time.monotonic_ns``)."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()


@dataclass(frozen=True)
class Timescale:
    day_seconds: float = 86400.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.day_seconds) and self.day_seconds > 0):
            raise ValueError(
                f"the length of a day must be a positive number of seconds, got {self.day_seconds}"
            )

    def days(self, count: float) -> timedelta:
        return timedelta(seconds=self.day_seconds * count)

    @property
    def is_real_time(self) -> bool:
        return self.day_seconds == 86400.0


def microseconds(delta: timedelta) -> int:
    """``delta`` in whole microseconds, exactly (no float on the way)."""
    return delta // timedelta(microseconds=1)

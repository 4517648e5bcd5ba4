"""Time, injected: a clock to read and a timescale that says how long a "day" is.

Pending windows, rotation periods and expiries are counted in days. ``kms-operator run
--day-seconds N`` shortens the day so tests watch real deletions happen (DESIGN.md section 8).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass(frozen=True)
class Timescale:
    day_seconds: float = 86400.0

    def days(self, count: float) -> timedelta:
        return timedelta(seconds=self.day_seconds * count)

    @property
    def is_real_time(self) -> bool:
        return self.day_seconds == 86400.0

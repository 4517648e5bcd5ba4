"""Time, injected: a clock to read, a timescale that says how long a "day" is, elapsed time.

Pending windows, rotation periods and expiries are counted in days. ``kms-operator run
--day-seconds N`` shortens the day so tests watch real deletions happen (DESIGN.md section 8).

The wall clock can be stepped (NTP, a wrong host clock, a restored VM), so destruction, the one
act that cannot be undone, also waits on :class:`ElapsedTime`: time accumulated from monotonic
readings and persisted in the store. A clock step does not advance it, and a restart resumes
from the value last persisted, so a crash can delay a destruction, never bring it forward.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

_NS_PER_US = 1000


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


class ElapsedTime:
    """Microseconds this store has been served, across restarts: never stepped, never lost.

    It starts from the value persisted in the store (``start_us``) and adds what the monotonic
    clock measured since. The owner persists :meth:`now_us` with every write and, between
    writes, whenever :meth:`persist_due` says so; after a crash the counter resumes from the
    value last persisted, which is never ahead of the time that really passed.
    """

    #: Between writes, persist at least this often (monotonic time), so a crash loses little.
    PERSIST_EVERY_US = 5_000_000

    def __init__(self, clock: Clock, start_us: int) -> None:
        self._clock = clock
        self._start_us = start_us
        self._base_ns = clock.monotonic_ns()
        self._persisted_us = start_us
        self._lock = threading.Lock()  # guards _persisted_us only; never held across I/O

    def __repr__(self) -> str:
        return f"ElapsedTime({self.now_us()} us)"

    @property
    def start_us(self) -> int:
        """The value this process resumed from."""
        return self._start_us

    def now_us(self) -> int:
        return self._start_us + max(0, self._clock.monotonic_ns() - self._base_ns) // _NS_PER_US

    def persist_due(self) -> bool:
        return self.now_us() - self._persisted_us >= self.PERSIST_EVERY_US

    def persisted(self, value_us: int) -> None:
        """The store holds ``value_us`` now (called after its transaction committed)."""
        with self._lock:
            self._persisted_us = max(self._persisted_us, value_us)

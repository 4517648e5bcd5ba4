"""A clock that moves only when a test says so (DESIGN.md section 8: tests never sleep).

:class:`ManualClock` satisfies :class:`kms_operator.keys.clock.Clock`: a wall clock
(timezone-aware UTC) and a monotonic clock, safe to share between threads (the integration
tests hand one to a running operator).

- :meth:`ManualClock.advance` is time passing: both clocks move forward. A negative delta is a
  backward step of the wall clock (as a wrong NTP step would); the monotonic clock stays.
- :meth:`ManualClock.step` and :meth:`ManualClock.set` step the wall clock only, either way.
- :meth:`ManualClock.advance_monotonic` moves the monotonic clock only.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

#: A fixed, unremarkable start: tests that print dates stay reproducible.
EPOCH = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
#: The monotonic reading at the start (any value: only differences count).
MONOTONIC_START_NS = 10**12


def _ns(delta: timedelta) -> int:
    return (delta // timedelta(microseconds=1)) * 1000


class ManualClock:
    """``now()`` returns the time last set; ``advance``, ``step`` and ``set`` move it."""

    def __init__(self, start: datetime = EPOCH, *, monotonic_ns: int = MONOTONIC_START_NS) -> None:
        self._lock = threading.Lock()
        self._now = _utc(start)
        self._monotonic_ns = monotonic_ns

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()}, monotonic={self._monotonic_ns} ns)"

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic_ns(self) -> int:
        with self._lock:
            return self._monotonic_ns

    def advance(self, delta: timedelta) -> datetime:
        """Let ``delta`` pass (both clocks); a negative one steps the wall clock back only."""
        with self._lock:
            self._now += delta
            if delta > timedelta(0):
                self._monotonic_ns += _ns(delta)
            return self._now

    def step(self, delta: timedelta) -> datetime:
        """Step the wall clock by ``delta`` (either way); no time passes."""
        with self._lock:
            self._now += delta
            return self._now

    def advance_monotonic(self, delta: timedelta) -> None:
        """Let ``delta`` pass on the monotonic clock only (the wall clock is held back)."""
        if delta < timedelta(0):
            raise ValueError("a monotonic clock never goes back")
        with self._lock:
            self._monotonic_ns += _ns(delta)

    def set(self, when: datetime) -> datetime:
        """Step the wall clock to ``when`` (timezone-aware); return it in UTC. No time passes."""
        with self._lock:
            self._now = _utc(when)
            return self._now


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"ManualClock needs a timezone-aware datetime, got {when!r}")
    return when.astimezone(UTC)

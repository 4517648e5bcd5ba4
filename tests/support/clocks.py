"""A clock that moves only when a test says so (DESIGN.md section 8: tests never sleep).

:class:`ManualClock` satisfies :class:`kms_operator.keys.clock.Clock`. It is timezone-aware UTC,
may jump forward or backward by any amount, and is safe to share between threads (the
integration tests hand one to a running operator).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

#: A fixed, unremarkable start: tests that print dates stay reproducible.
EPOCH = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class ManualClock:
    """``now()`` returns the time last set; ``advance`` and ``set`` move it."""

    def __init__(self, start: datetime = EPOCH) -> None:
        self._lock = threading.Lock()
        self._now = _utc(start)

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()})"

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        """Move by ``delta`` (negative moves back, as a wrong NTP step would); return the time."""
        with self._lock:
            self._now += delta
            return self._now

    def set(self, when: datetime) -> datetime:
        """Jump to ``when``, which must be timezone-aware; return it in UTC."""
        with self._lock:
            self._now = _utc(when)
            return self._now


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"ManualClock needs a timezone-aware datetime, got {when!r}")
    return when.astimezone(UTC)

"""The one text form of a moment in objects, API answers, messages and logs: RFC 3339, UTC, ``Z``.

Fractional seconds are written only when the moment has them (as Go's ``time.RFC3339Nano``,
which is what ``kubectl`` and the API server parse), up to microseconds, so a moment read back
from a status field is exactly the one written: expiry decisions are taken on such reads. Whole
seconds, which is what most of our clocks and every test clock hold, print as
``2026-11-29T12:00:00Z``. The store keeps its own column format (``datetime.isoformat``) since
it is a file format with migrations, not a display. Log and audit lines use :func:`log_time`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any


def rfc3339(moment: datetime) -> str:
    """``moment`` (aware) in UTC: ``2026-11-29T12:00:00Z`` or ``2026-11-29T12:00:00.123456Z``."""
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def rfc3339_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else rfc3339(moment)


#: The last whole second :func:`log_time` formatted, and its text (one strftime per second).
_second: list[Any] = [None, ""]


def log_time(epoch: float) -> str:
    """A log or audit line's time: RFC 3339 UTC with milliseconds always, so that lines of one
    log sort as text; cheap per call (the audit writes one line per API call)."""
    whole = int(epoch)
    if _second[0] != whole:
        _second[0], _second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((epoch - whole) * 1000):03d}Z"


def parse_rfc3339(value: str | None) -> datetime | None:
    """An RFC 3339 date-time (``Z`` or an offset) as aware UTC; ValueError when malformed."""
    if not value:
        return None
    moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    return moment.astimezone(UTC)

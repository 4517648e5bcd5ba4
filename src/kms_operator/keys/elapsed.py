"""Elapsed time, and the rule of destruction over it (DESIGN.md section 2, issue 8 item 8).

A key is destroyed only when its window has passed on both of two measures:

- the wall clock: ``now >= deletion_date``;
- the store's elapsed time: microseconds accumulated from monotonic readings while the store
  is served, persisted in it with every write and every few seconds in between. Each deletion
  request records the value (``deletion_requested_elapsed``), and the window must have passed
  on it too.

A step of the wall clock does not advance elapsed time, and a restart resumes it from the value
last persisted, which is never ahead of the time that really passed: downtime and a crash can
delay a destruction, never bring it forward. Only destruction needs this: every other timer
(rotation, material expiry) can be undone, so the wall clock alone decides those.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from kms_operator.errors import KmsError
from kms_operator.store.base import KeyStore
from kms_operator.store.records import KeyRecord

from .clock import Clock, microseconds

log = logging.getLogger(__name__)

_NS_PER_US = 1000


class ElapsedTime:
    """Microseconds the store has been served, across restarts: never stepped, never lost."""

    #: Between writes, persist at least this often (monotonic time), so a crash loses little.
    PERSIST_EVERY_US = 5_000_000

    def __init__(self, clock: Clock, store: KeyStore) -> None:
        self._clock = clock
        self._store = store
        self._start_us = store.load_elapsed()
        self._base_ns = clock.monotonic_ns()
        self._persisted_us = self._start_us
        self._lock = threading.Lock()  # guards _persisted_us only; never held across I/O
        #: Held while a background thread persists the counter (one at a time).
        self._persisting = threading.Lock()

    def __repr__(self) -> str:
        return f"ElapsedTime({self.now_us()} us)"

    @property
    def start_us(self) -> int:
        """The value this process resumed from."""
        return self._start_us

    def now_us(self) -> int:
        return self._start_us + max(0, self._clock.monotonic_ns() - self._base_ns) // _NS_PER_US

    def persisted(self, value_us: int) -> None:
        """The store holds ``value_us`` now (a write committed it)."""
        with self._lock:
            self._persisted_us = max(self._persisted_us, value_us)

    # -- persisting between writes -------------------------------------------------------

    def keep(self, *, wait: bool) -> None:
        """Persist the counter if the last value persisted is a few seconds old.

        ``wait=False`` is for the event loop: a background thread writes it (one at a time).
        """
        if self.now_us() - self._persisted_us < self.PERSIST_EVERY_US:
            return
        if wait:
            self._persist()
        elif self._persisting.acquire(blocking=False):
            threading.Thread(
                target=self._persist_in_background, name="kms-elapsed", daemon=True
            ).start()

    @property
    def persisting(self) -> bool:
        """True while a background thread is writing the counter."""
        return self._persisting.locked()

    def settle(self) -> None:
        """Wait until no background write is running (a process stopping, tests)."""
        with self._persisting:
            pass

    def _persist(self) -> None:
        value = self.now_us()
        self._store.save_elapsed(value)  # the store retries a pending shred after it, too
        self.persisted(value)

    def _persist_in_background(self) -> None:
        try:
            self._persist()
        except KmsError as exc:
            log.warning("could not persist the elapsed time: %s", exc.message)
        finally:
            self._persisting.release()

    # -- the rule ------------------------------------------------------------------------

    def destruction_due(self, record: KeyRecord, now: datetime) -> bool:
        """Both measures passed the window (the caller checked the key is pending deletion)."""
        assert record.deletion_date is not None
        return now >= record.deletion_date and self._left_us(record) <= 0

    def destruction_date(self, record: KeyRecord, now: datetime) -> datetime:
        """The wall-clock date at which both will have passed: ``deletion_date``, or now plus
        what is left of the window on elapsed time if that is later.

        Once the window has passed on elapsed time it is ``deletion_date`` itself, never "now":
        a caller comparing it with a ``now`` read a moment earlier must find it due.
        """
        assert record.deletion_date is not None
        left = self._left_us(record)
        if left <= 0:
            return record.deletion_date
        return max(record.deletion_date, now + timedelta(microseconds=left))

    def _left_us(self, record: KeyRecord) -> int:
        assert record.deletion_date is not None
        requested_at = record.deletion_requested_at or record.deletion_date
        window = microseconds(record.deletion_date - requested_at)
        requested = record.deletion_requested_elapsed
        if requested is None:
            # Written without the measure (not by this service): the window starts when this
            # process started, so it restarts with every restart. Later, never earlier.
            requested = self._start_us
        return window - (self.now_us() - requested)

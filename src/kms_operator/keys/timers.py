"""The timers: what time alone changes in a key (destruction, automatic rotation, expiry).

:meth:`TimerVerbs.run_due` is the scheduler's one call: it finds every key whose earliest date
has come and acts on it under the writer lock, reading each key once; it returns what it did,
for the caller to show. :meth:`TimerVerbs.next_deadline` says when to call it again.

Destruction waits on two clocks: the wall clock (``deletion_date``) and the store's elapsed
time (:mod:`kms_operator.keys.elapsed`), so a forward step of the wall clock destroys nothing
early. Rotation and expiry can be undone, so the wall clock alone decides those.
"""

from __future__ import annotations

import enum
import logging
import uuid
from datetime import datetime

from kms_operator.errors import KmsError
from kms_operator.store.records import KeyRecord, KeyState, VersionRecord, VersionState

from .base import ServiceBase

log = logging.getLogger(__name__)


class Timer(enum.Enum):
    """Which timer of a key fired."""

    DESTRUCTION = "destruction"
    ROTATION = "rotation"
    EXPIRY = "expiry"


class TimerVerbs(ServiceBase):
    def next_deadline(self, key_id: uuid.UUID | None = None) -> datetime | None:
        """The earliest date at which time alone changes this key (deletion, rotation, expiry),
        or any key when none is given; None when no timer is set.

        For a deletion, the wall-clock date at which both of its measures will have passed:
        the later of ``deletion_date`` and now plus what is left of the window on the
        elapsed measure. Called on the event loop: it never waits (the elapsed time is
        persisted by a background thread when due).
        """
        self.elapsed.keep(wait=False)
        now = self.clock.now()
        records = self.keys() if key_id is None else [self.get(key_id)]
        dates = [d for d in (self._deadline(r, now) for r in records) if d is not None]
        return min(dates, default=None)

    def run_due(self, now: datetime) -> list[tuple[KeyRecord, Timer]]:
        """Act on every timer due at ``now``; return each key changed and what changed it.

        A key's domain error is logged and skipped (its timer stays due and is retried on the
        next run); other keys go on. Runs in a thread: it may wait to persist elapsed time.
        """
        self.elapsed.keep(wait=True)
        fired: list[tuple[KeyRecord, Timer]] = []
        for candidate in self.keys():
            deadline = self._deadline(candidate, now)
            if deadline is None or deadline > now:
                continue
            try:
                with self._index.writing():
                    self._fire(self.get(candidate.key_id), now, fired)
            except KmsError as exc:
                log.warning("timer of key %s failed: %s", candidate.key_id, exc.message)
        return fired

    def _deadline(self, record: KeyRecord, now: datetime) -> datetime | None:
        if record.state is KeyState.DESTROYED:
            return None
        if record.deletion_date is not None:
            return self.elapsed.destruction_date(record, now)
        dates = [v.expires_at for v in record.versions if v.expires_at is not None]
        if record.next_rotation_at is not None and record.state is KeyState.ENABLED:
            dates.append(record.next_rotation_at)
        return min(dates, default=None)

    def _fire(self, record: KeyRecord, now: datetime, fired: list[tuple[KeyRecord, Timer]]) -> None:
        """Fire every timer of ``record`` due at ``now``, in order, adding each change to
        ``fired`` as soon as it is in the store (writer lock held)."""
        if record.state is KeyState.DESTROYED:
            return
        if record.deletion_date is not None:
            destroyed = self._destroy_if_due(record, now)
            if destroyed is not None:
                fired.append((destroyed, Timer.DESTRUCTION))
            return
        due = record.next_rotation_at
        if due is not None and record.state is KeyState.ENABLED and due <= now:
            record, material = self._rotation(record, now, scheduled=True)
            self._save(record, add_material=material)
            log.info(
                "rotated key %s to version %d (scheduled)", record.key_id, record.current_version
            )
            fired.append((record, Timer.ROTATION))
        if any(
            v.expires_at is not None and v.expires_at <= now and v.state is VersionState.ENABLED
            for v in record.versions
        ):
            record = self._drop_material(
                record, lambda v: v.expires_at is not None and v.expires_at <= now
            )
            fired.append((record, Timer.EXPIRY))

    def _destroy_if_due(self, record: KeyRecord, now: datetime) -> KeyRecord | None:
        """Crypto-shred every version once the window has passed on both measures.

        A forward step of the wall clock satisfies only the first, a restart loses nothing of
        the second (it resumes from the value persisted), so a key is never destroyed early;
        at worst later.
        """
        assert record.deletion_date is not None
        if now < record.deletion_date:
            return None
        if not self.elapsed.destruction_due(record, now):
            log.info(
                "key %s: the wall clock passed its deletion date, but not the time elapsed "
                "since the request (the clock was stepped, or the operator was down): waiting",
                record.key_id,
            )
            return None
        destroyed = record.evolve(
            destroyed_at=now,
            enabled=False,
            aliases=(),
            versions=tuple(
                VersionRecord(v.version, v.created_at, VersionState.DESTROYED)
                for v in record.versions
            ),
        )
        elapsed = self.elapsed.now_us()
        self._store.destroy(destroyed, elapsed_us=elapsed)
        self.elapsed.persisted(elapsed)
        self._index.publish(destroyed)
        log.info("key %s destroyed: every version's material was removed", record.key_id)
        return destroyed

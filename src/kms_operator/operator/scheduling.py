"""Timers driven from the store's dates: destruction, automatic rotation, material expiry.

The store keeps every date, and the key service decides what is due and acts on it
(:meth:`~kms_operator.keys.service.KeyService.run_due`); this loop calls it, shows each change
on the key's object (an Event, the status, the finalizer released after a destruction) and
sleeps until the next date (re-reading the clock at least every ``max_sleep`` seconds), so
restarts, clock jumps and missed events neither lose nor advance a schedule. Handlers call
:meth:`DeadlineScheduler.wake` when they change a date.

The loop survives any exception of a scan (a full disk, a store that went away): it logs,
backs off exponentially (capped) and retries; :meth:`DeadlineScheduler.problem` says why it is
unhealthy meanwhile (the API's ``/readyz`` shows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from kms_operator.contract import CMK_KIND, SCHEDULED_DELETION_FINALIZER
from kms_operator.keys.service import KeyService, Timer
from kms_operator.kube.objects import Objects
from kms_operator.store.records import KeyRecord, KeyState

from . import conditions, statuses
from .outcomes import Notice, ObjectRef, post_notices_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Exponential delays between retries: ``first``, twice that, ..., at most ``cap``.

    ``sleep`` is injectable so that tests never wait on the wall clock.
    """

    first: float = 1.0
    cap: float = 60.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, compare=False)

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failure in a row (1 for the first)."""
        return float(min(self.cap, self.first * 2 ** min(max(failures, 1) - 1, 32)))


#: A destroyed key's object to release: namespace, name and the object's UID (None: any).
_Unreleased = tuple[str, str, str | None]

#: How each timer's change is shown on the key's object: the Event's reason and message.
_SHOWN = {
    Timer.DESTRUCTION: (conditions.DESTROYED, "every version was destroyed"),
    Timer.ROTATION: (conditions.ROTATED, "rotated on its schedule"),
    Timer.EXPIRY: (
        conditions.MATERIAL_EXPIRED,
        "imported material reached its validTo and was deleted",
    ),
}


class DeadlineScheduler:
    def __init__(
        self,
        service: KeyService,
        objects: Objects,
        *,
        max_sleep: float = 30.0,
        coalesce: float = 0.2,
        backoff: Backoff | None = None,
    ) -> None:
        self._coalesce = coalesce
        self._service = service
        self._objects = objects
        self._max_sleep = max_sleep
        self._backoff = backoff or Backoff()
        self._wakeup = asyncio.Event()
        #: Destroyed keys whose object still holds the finalizer (a failed release is retried).
        self._unreleased: set[_Unreleased] = set()
        self._problem: str | None = None

    def wake(self) -> None:
        self._wakeup.set()

    def problem(self) -> str | None:
        """None while healthy; why the last scan failed otherwise (for ``/readyz``)."""
        return self._problem

    async def run(self) -> None:
        failures = 0
        while True:
            self._wakeup.clear()
            # Coalesce a burst of wake-ups (1,000 keys applied at once) into one scan.
            await asyncio.sleep(self._coalesce)
            try:
                delay = await self._scan()
            except Exception as exc:
                # Any failure (a full disk, a store error, a bug): never let the timers die.
                failures += 1
                backoff = self._backoff.delay(failures)
                self._problem = (
                    f"the deadline scheduler failed {failures} time(s) in a row "
                    f"({type(exc).__name__}); retrying in {backoff:g} s"
                )
                log.error("%s", self._problem, exc_info=True)
                # Wake-ups do not shorten a back-off: a burst of them must not spin the loop.
                await self._backoff.sleep(backoff)
                continue
            if failures:
                log.info("the deadline scheduler works again after %d failure(s)", failures)
            failures, self._problem = 0, None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=delay)

    async def _scan(self) -> float:
        """Act on every due date; return how long to sleep until the next one."""
        for unreleased in list(self._unreleased):
            await asyncio.to_thread(self._release, *unreleased)
        fired = await asyncio.to_thread(self._service.run_due, self._service.clock.now())
        for record, timer in fired:
            await asyncio.to_thread(self._publish, record, timer)
        earliest = self._service.next_deadline()
        delay = self._max_sleep if not self._unreleased else 1.0
        if earliest is not None:
            delay = max(0.05, min(delay, (earliest - self._service.clock.now()).total_seconds()))
        return delay

    def _publish(self, record: KeyRecord, timer: Timer) -> None:
        """Mirror a timer's change onto the custom resource; release it once destroyed."""
        reason, message = _SHOWN[timer]
        if timer is Timer.DESTRUCTION:
            message = f"{message} (version {record.current_version} was current)"
        try:
            publish_key_change(self._objects, record, reason, message, self._service.clock.now())
        except Exception:
            # The store already holds the change; the object catches up on its next event.
            log.exception("could not publish %s of key %s to its object", reason, record.key_id)
        if record.state is KeyState.DESTROYED and not record.is_detached:
            unreleased = (record.namespace, record.name, record.object_uid)
            self._unreleased.add(unreleased)
            self._release(*unreleased)

    def _release(self, namespace: str, name: str, object_uid: str | None) -> None:
        """Remove our finalizer from the object of a destroyed key (retried until it works).

        Only the key's own object (same UID, when the key knows it) is released: another
        object of that name is none of this key's business.
        """
        try:
            body = self._objects.get_cmk(namespace, name)
            if (
                body is not None
                and body["metadata"].get("deletionTimestamp")
                and object_uid in (None, body["metadata"].get("uid"))
            ):
                self._objects.remove_finalizer(body, SCHEDULED_DELETION_FINALIZER)
            self._unreleased.discard((namespace, name, object_uid))
        except Exception:
            log.exception("could not release %s/%s; retrying", namespace, name)


def publish_key_change(
    objects: Objects, record: KeyRecord, reason: str, message: str, now: datetime
) -> None:
    """A change made in the store, shown on the key's object: an Event, and the new status
    (unless the key is destroyed: its object is about to be released).

    A detached key (its namespace was deleted and created again, or its object is gone) has no
    object: an object of the same name now is someone else's, so only an Event naming the key
    is posted and no status is written.
    """
    body = objects.get_cmk(record.namespace, record.name)
    if body is not None and (
        record.is_detached or record.object_uid not in (None, body["metadata"].get("uid"))
    ):
        body = None
    uid = body["metadata"].get("uid") if body else None
    if uid is None:
        message = f"key {record.key_id} (no CustomerMasterKey holds it): {message}"
    # A namespace being deleted refuses new Events (logged); the status below still shows it.
    post_notices_now(
        objects,
        ObjectRef(CMK_KIND, record.namespace, record.name, uid),
        [Notice("Normal", reason, message)],
    )
    if body is None or record.state is KeyState.DESTROYED:
        return
    objects.patch_cmk_status(
        record.namespace,
        record.name,
        statuses.key_status(
            record,
            existing_conditions=(body.get("status") or {}).get("conditions"),
            generation=None,
            now=now,
        ),
    )

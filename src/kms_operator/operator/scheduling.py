"""Timers driven from the store's dates: destruction, automatic rotation, material expiry.

The store keeps every date; this loop sleeps until the earliest one (re-reading the clock at
least every ``max_sleep`` seconds), so restarts, clock jumps and missed events neither lose
nor advance a schedule. Handlers call :meth:`DeadlineScheduler.wake` when they change a date.

The loop survives any exception of a scan (a full disk, a store that went away): it logs,
backs off exponentially (capped) and retries; :meth:`DeadlineScheduler.problem` says why it is
unhealthy meanwhile (the API's ``/readyz`` shows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from kms_operator.contract import SCHEDULED_DELETION_FINALIZER
from kms_operator.errors import KmsError
from kms_operator.keys.service import KeyService
from kms_operator.kube.objects import Objects
from kms_operator.store.records import KeyRecord, KeyState

from . import conditions, statuses

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
        now = self._service.clock.now()
        earliest = None
        for record in self._service.keys():
            if record.state is KeyState.DESTROYED:
                continue
            due = self._service.next_deadline(record.key_id)
            if due is None:
                continue
            if due <= now:
                await self._act(record.key_id)
                due = self._service.next_deadline(record.key_id)
            if due is not None and (earliest is None or due < earliest):
                earliest = due
        delay = self._max_sleep if not self._unreleased else 1.0
        if earliest is not None:
            delay = max(0.05, min(delay, (earliest - self._service.clock.now()).total_seconds()))
        return delay

    async def _act(self, key_id: uuid.UUID) -> None:
        steps: list[tuple[Callable[[uuid.UUID], KeyRecord | None], str, str]] = [
            (self._service.destroy_if_due, conditions.DESTROYED, "every version was destroyed"),
            (self._service.rotate_if_due, conditions.ROTATED, "rotated on its schedule"),
            (
                self._service.expire_material_if_due,
                conditions.MATERIAL_EXPIRED,
                "imported material reached its validTo and was deleted",
            ),
        ]
        for step, reason, message in steps:
            try:
                changed = await asyncio.to_thread(step, key_id)
            except KmsError as exc:
                log.warning("timer for key %s failed: %s", key_id, exc.message)
                continue
            if changed is not None:
                await asyncio.to_thread(self._publish, changed, reason, message)

    def _publish(self, record: KeyRecord, reason: str, message: str) -> None:
        """Mirror a timer's change onto the custom resource; release it once destroyed."""
        if reason == conditions.DESTROYED:
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
    try:
        objects.post_event(
            record.namespace, record.name, uid, type_="Normal", reason=reason, message=message
        )
    except Exception:
        # A namespace being deleted refuses new Events; the status below still shows it.
        log.warning(
            "could not post the %s Event of key %s (%s/%s): %s",
            reason,
            record.key_id,
            record.namespace,
            record.name,
            message,
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

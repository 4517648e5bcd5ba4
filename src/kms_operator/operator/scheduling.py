"""Timers driven from the store's dates: destruction, automatic rotation, material expiry.

The store keeps every date; this loop sleeps until the earliest one (re-reading the clock at
least every ``max_sleep`` seconds), so restarts, clock jumps and missed events neither lose
nor advance a schedule. Handlers call :meth:`DeadlineScheduler.wake` when they change a date.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from kms_operator.errors import KmsError
from kms_operator.keys.service import KeyService
from kms_operator.kube.objects import Objects
from kms_operator.store.records import KeyRecord, KeyState

from . import conditions, statuses

log = logging.getLogger(__name__)

FINALIZER = "kms.cmk.dev/scheduled-deletion"


class DeadlineScheduler:
    def __init__(
        self,
        service: KeyService,
        objects: Objects,
        *,
        max_sleep: float = 30.0,
        coalesce: float = 0.2,
    ) -> None:
        self._coalesce = coalesce
        self._service = service
        self._objects = objects
        self._max_sleep = max_sleep
        self._wakeup = asyncio.Event()
        #: Destroyed keys whose object still holds the finalizer (a failed release is retried).
        self._unreleased: set[tuple[str, str]] = set()

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            self._wakeup.clear()
            # Coalesce a burst of wake-ups (1,000 keys applied at once) into one scan.
            await asyncio.sleep(self._coalesce)
            for namespace, name in list(self._unreleased):
                await asyncio.to_thread(self._release, namespace, name)
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
                delay = max(
                    0.05, min(delay, (earliest - self._service.clock.now()).total_seconds())
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=delay)

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
        if record.state is KeyState.DESTROYED:
            self._unreleased.add((record.namespace, record.name))
            self._release(record.namespace, record.name)

    def _release(self, namespace: str, name: str) -> None:
        """Remove our finalizer from the object of a destroyed key (retried until it works)."""
        try:
            body = self._objects.get_cmk(namespace, name)
            if body is not None and body["metadata"].get("deletionTimestamp"):
                self._objects.remove_finalizer(body, FINALIZER)
            self._unreleased.discard((namespace, name))
        except Exception:
            log.exception("could not release %s/%s; retrying", namespace, name)


def publish_key_change(
    objects: Objects, record: KeyRecord, reason: str, message: str, now: datetime
) -> None:
    """A change made in the store, shown on the key's object: an Event, and the new status
    (unless the key is destroyed: its object is about to be released)."""
    body = objects.get_cmk(record.namespace, record.name)
    uid = body["metadata"].get("uid") if body else None
    objects.post_event(
        record.namespace, record.name, uid, type_="Normal", reason=reason, message=message
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

"""Carrying out the deletion decisions (:mod:`.deletion`) on a terminating object.

Kopf does not retry event handlers, so :func:`handle_deletion` retries itself: every failure
is a log line, a Warning Event and ``Synced=False`` (reason ``DeletionFailed``), and is tried
again after a growing delay (:class:`~kms_operator.operator.scheduling.Backoff`), never
swallowed. Kubernetes cannot undo a deletion, so keeping a key's object means releasing the
old object and creating it again (:func:`recreate`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from kms_operator.contract import CMK_KIND, KEY_ID_ANNOTATION, SCHEDULED_DELETION_FINALIZER
from kms_operator.errors import KmsError
from kms_operator.store.records import KeyRecord, KeyState

from .. import conditions, statuses
from ..conditions import Condition
from ..outcomes import Notice, ObjectRef, post_notices_now
from ..runtime import Runtime
from .binding import bind
from .deletion import (
    DELETION_FAILED,
    DELETION_SCHEDULED,
    Step,
    failure_message,
    fresh_object,
    plan_deletion,
    scheduled_message,
)
from .drift import report_detached
from .specs import CustomerMasterKeySpec

log = logging.getLogger(__name__)

#: Polls (0.1 s apart) for a released object to disappear before it is created again.
_GONE_POLLS = 100


def _announce(runtime: Runtime, ref: ObjectRef, notices: tuple[Notice, ...]) -> None:
    """Events, best effort: the API server refuses new Events in a namespace being deleted
    (the status condition and the log line still say it)."""
    for notice in notices:
        log.info("%s/%s: %s: %s", ref.namespace, ref.name, notice.reason, notice.message)
    post_notices_now(runtime.objects, ref, notices)


async def handle_deletion(runtime: Runtime, body: dict[str, Any]) -> None:
    """Handle one terminating object; every failure is an Event and ``Synced=False`` and is
    retried after a growing delay, until it works or the object is released or replaced."""
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid")
    failures = 0
    while True:
        try:
            fresh = await asyncio.to_thread(_handle_deletion, runtime, body)
            break
        except Exception as exc:
            failures += 1
            delay = runtime.backoff.delay(failures)
            await asyncio.to_thread(
                _report_failure, runtime, body, "handling the deletion", exc, delay
            )
            await runtime.backoff.sleep(delay)
            try:
                current = await asyncio.to_thread(runtime.objects.get_cmk, namespace, name)
            except Exception:
                log.warning("could not read %s/%s; retrying", namespace, name, exc_info=True)
                continue  # unknown: retry with the object as last seen
            if (
                current is None
                or current["metadata"].get("uid") != uid
                or SCHEDULED_DELETION_FINALIZER not in (current["metadata"].get("finalizers") or [])
            ):
                return  # released or replaced meanwhile: nothing left to do
            body = current
    if fresh is not None:
        await recreate(runtime, body, fresh)


def _handle_deletion(runtime: Runtime, body: dict[str, Any]) -> dict[str, Any] | None:
    """Schedule, cancel or refuse; returns the object to create again (cancelled deletion,
    refused default-key deletion) or None."""
    service, objects = runtime.service, runtime.objects
    meta = body["metadata"]
    info = objects.namespace_info(meta["namespace"])
    if info is None:
        raise KmsError(f"namespace {meta['namespace']} not found")
    binding = bind(service, body, info)
    report_detached(objects, binding.detached)
    record = binding.record
    if record is None:
        # Destroyed already, never created, or another object's key: nothing to protect here.
        objects.remove_finalizer(body, SCHEDULED_DELETION_FINALIZER)
        return None
    plan = plan_deletion(
        record, meta.get("annotations") or {}, namespace_terminating=info.terminating
    )
    if plan.step is Step.CANCEL and record.state is KeyState.PENDING_DELETION:
        service.cancel_deletion(record.key_id)
    _announce(runtime, ObjectRef.of(CMK_KIND, body), plan.notices)
    if plan.step is not Step.SCHEDULE:
        return fresh_object(body, record, enabled=plan.step is Step.KEEP)
    spec = CustomerMasterKeySpec.parse(body.get("spec") or {})
    schedule(
        runtime, body, record, spec.pending_window_days, namespace_terminating=info.terminating
    )
    return None


def schedule(
    runtime: Runtime,
    body: dict[str, Any] | None,
    record: KeyRecord,
    pending_window_days: int,
    *,
    namespace_terminating: bool,
) -> KeyRecord:
    """Schedule the key's deletion; show it on ``body`` (when there is one) and as an Event."""
    service, objects = runtime.service, runtime.objects
    was_pending = record.state is KeyState.PENDING_DELETION
    record = service.schedule_deletion(
        record.key_id, pending_window_days, namespace_terminating=namespace_terminating
    )
    why = scheduled_message(record, namespace_terminating=namespace_terminating)
    meta = (body or {}).get("metadata") or {}
    if body is not None:
        objects.patch_cmk_status(
            record.namespace,
            record.name,
            statuses.key_status(
                record,
                existing_conditions=(body.get("status") or {}).get("conditions"),
                extra_conditions=[Condition(conditions.SYNCED, True, DELETION_SCHEDULED, why)],
                generation=meta.get("generation"),
                now=service.clock.now(),
            ),
        )
    if not was_pending:
        ref = ObjectRef(CMK_KIND, record.namespace, record.name, meta.get("uid"))
        _announce(runtime, ref, (Notice("Warning", DELETION_SCHEDULED, why),))
    runtime.scheduler.wake()
    return record


def _report_failure(
    runtime: Runtime, body: dict[str, Any], doing: str, exc: Exception, delay: float
) -> None:
    """A failure, where the user looks: a log line, a Warning Event and ``Synced=False``."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    message = failure_message(doing, exc, delay)
    log.warning("%s/%s: %s", namespace, name, message, exc_info=exc)
    post_notices_now(
        runtime.objects, ObjectRef.of(CMK_KIND, body), [Notice("Warning", DELETION_FAILED, message)]
    )
    try:
        runtime.objects.patch_cmk_status(
            namespace,
            name,
            {
                "conditions": conditions.merge_conditions(
                    (body.get("status") or {}).get("conditions"),
                    [Condition(conditions.SYNCED, False, DELETION_FAILED, message)],
                    generation=None,
                    now=runtime.service.clock.now(),
                )
            },
        )
    except Exception:
        log.warning("could not write the DeletionFailed condition of %s/%s", namespace, name)


async def recreate(runtime: Runtime, body: dict[str, Any], fresh: dict[str, Any]) -> None:
    """Release the terminating object and create ``fresh`` in its place (Kubernetes cannot
    undo a deletion), retried with back-off until it is done."""
    failures = 0
    while True:
        try:
            await _recreate_once(runtime, body, fresh)
            return
        except Exception as exc:
            failures += 1
            delay = runtime.backoff.delay(failures)
            await asyncio.to_thread(
                _report_failure, runtime, body, "creating the object again", exc, delay
            )
            await runtime.backoff.sleep(delay)


async def _recreate_once(runtime: Runtime, body: dict[str, Any], fresh: dict[str, Any]) -> None:
    objects = runtime.objects
    meta = body["metadata"]
    namespace, name, old_uid = meta["namespace"], meta["name"], meta.get("uid")
    # The old object disappears once its last finalizer is gone: release it, wait, create.
    for _ in range(_GONE_POLLS):
        current = await asyncio.to_thread(objects.get_cmk, namespace, name)
        if current is None:
            break
        if current["metadata"].get("uid") != old_uid:
            return  # created again already (by an earlier attempt)
        if SCHEDULED_DELETION_FINALIZER in (current["metadata"].get("finalizers") or []):
            await asyncio.to_thread(objects.remove_finalizer, current, SCHEDULED_DELETION_FINALIZER)
            continue
        await runtime.backoff.sleep(0.1)
    else:
        raise KmsError(
            f"{namespace}/{name} was released but is still there after "
            f"{_GONE_POLLS * 0.1:g} s (another finalizer holds it?)"
        )
    key_id = fresh["metadata"]["annotations"][KEY_ID_ANNOTATION]
    try:
        await asyncio.to_thread(objects.create_cmk, namespace, fresh)
    except Exception as exc:
        if getattr(exc, "status", None) == 409:
            return  # someone created it meanwhile; it binds (or not) on its own
        info = await asyncio.to_thread(objects.namespace_info, namespace)
        if info is not None and not info.terminating:
            raise
        # The namespace began terminating meanwhile: no object can come back, so the key
        # goes with the namespace instead of outliving it.
        record = runtime.service.get(uuid.UUID(key_id))
        spec = CustomerMasterKeySpec.parse(fresh.get("spec") or {})
        await asyncio.to_thread(
            schedule, runtime, None, record, spec.pending_window_days, namespace_terminating=True
        )
        return
    log.info("created %s/%s again, bound to key %s", namespace, name, key_id)

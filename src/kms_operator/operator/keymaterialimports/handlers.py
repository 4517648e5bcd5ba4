"""Kopf's edge for ``KeyMaterialImport``: read the body, run one step, write what it found.

Every Event goes through :func:`~kms_operator.operator.outcomes.post_notices`; a domain
error is mapped once, by :func:`~kms_operator.operator.outcomes.handler_error`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from kms_operator.contract import GROUP, KMI_KIND, KMI_PLURAL, VERSION
from kms_operator.errors import KmsError

from .. import conditions
from ..outcomes import ObjectRef, handler_error, post_notices, status_patch
from ..registries import registry
from ..runtime import Runtime
from . import decisions, deletion, expiry, importing
from .views import ImportStatus

log = logging.getLogger(__name__)


@kopf.on.resume(GROUP, VERSION, KMI_PLURAL, id="kmi-resume", registry=registry)
@kopf.on.create(GROUP, VERSION, KMI_PLURAL, id="kmi-create", registry=registry)
@kopf.on.update(GROUP, VERSION, KMI_PLURAL, id="kmi-update", registry=registry)
async def reconcile_handler(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    if body.meta.get("deletionTimestamp"):
        return  # kmi-delete owns terminating objects
    runtime: Runtime = memo.runtime
    status = ImportStatus.parse(body.status)
    generation = body.metadata.get("generation")
    if decisions.settled(status, generation):
        return  # a restart, or a change of metadata only
    try:
        outcome = await importing.reconcile(runtime, body, status, generation)
    except KmsError as exc:
        raise handler_error(exc) from None
    existing = body.status.get("conditions")
    patch.status.update(
        status_patch(
            outcome,
            existing_conditions=existing,
            generation=generation,
            now=runtime.service.clock.now(),
        )
    )
    previous = conditions.find_condition(existing, conditions.READY)
    await post_notices(
        runtime.objects, ObjectRef.of(KMI_KIND, body), outcome.notices_to_post(previous)
    )
    if outcome.retry_after is not None:
        raise kopf.TemporaryError(outcome.ready.message, delay=outcome.retry_after)


def expiry_watched(status: kopf.Status, spec: kopf.Spec, **_: Any) -> bool:
    """The daemon's filter: see :func:`.decisions.expiry_watched`."""
    return decisions.expiry_watched(ImportStatus.parse(status), valid_to=spec.get("validTo"))


@kopf.daemon(
    GROUP,
    VERSION,
    KMI_PLURAL,
    id="kmi-expiry",
    registry=registry,
    when=expiry_watched,
    # Stopped (filter no longer true, object deleted) it exits at once on ``stopped``; only a
    # stuck API call is cancelled, after the back-off.
    cancellation_backoff=2.0,
    cancellation_timeout=10.0,
)
async def expiry_daemon(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """Sleep until the next expiry date, re-reading it (status, store) at least every so often."""
    runtime: Runtime = memo.runtime
    longest = min(30.0, runtime.settings.day_seconds / 4)
    while not stopped:
        try:
            delay = await asyncio.to_thread(expiry.expire_if_due, runtime, dict(body))
        except Exception:
            log.exception(
                "expiry check of %s/%s failed; retrying",
                body.metadata.namespace,
                body.metadata.name,
            )
            delay = longest
        await stopped.wait(max(0.05, min(longest, delay)))


@kopf.on.delete(GROUP, VERSION, KMI_PLURAL, id="kmi-delete", registry=registry)
async def delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Deleting the import deletes its material: the key goes to PendingImport."""
    runtime: Runtime = memo.runtime
    try:
        changed = await asyncio.to_thread(deletion.delete_material, runtime, dict(body))
    except KmsError as exc:
        if exc.retryable:
            raise handler_error(exc) from None
        log.warning(
            "material of %s/%s not deleted: %s",
            body.metadata.namespace,
            body.metadata.name,
            exc.message,
        )
        return
    if changed:
        runtime.scheduler.wake()

"""Kopf's edge for ``DataKey``: read the body, run one reconciliation, write what it found.

The reconciliation itself (:mod:`.reconciling`) is synchronous and runs in a thread; these
handlers turn its outcome into a status patch, the Events (through
:func:`~kms_operator.operator.outcomes.post_notices`) and a ``kopf.TemporaryError`` when it
asks for a retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import kopf

from kms_operator.contract import CMK_KIND, DK_KIND, DK_PLURAL, GROUP, VERSION
from kms_operator.errors import NotFound
from kms_operator.keys.service import KeyService
from kms_operator.kube.objects import Objects
from kms_operator.kube.secrets import Secrets
from kms_operator.store.records import KeyRecord

from ..outcomes import ObjectRef, Outcome, post_notices, post_notices_now
from ..registries import registry
from ..runtime import Runtime
from . import decisions, reconciling
from .namespaces import NamespaceUids
from .views import DataKeyView

log = logging.getLogger(__name__)

#: Seconds between two checks of a DataKey against its key (in memory, no API call).
CHECK_INTERVAL = 5.0
#: Seconds between two full reconciliations (one Secret GET) when nothing seems to change.
RESYNC_INTERVAL = 300.0


@kopf.on.startup(id="dk-secrets-client", registry=registry)
async def connect(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    memo.dk_secrets = await asyncio.to_thread(Secrets.connect, runtime.settings.kubeconfig)
    memo.dk_namespaces = NamespaceUids(runtime.objects.namespace_info)


@kopf.on.cleanup(id="dk-secrets-client-close", registry=registry)
async def disconnect(memo: kopf.Memo, **_: Any) -> None:
    secrets: Secrets | None = memo.get("dk_secrets")
    if secrets is not None:
        secrets.close()


@kopf.on.resume(GROUP, VERSION, DK_PLURAL, id="dk-resume", registry=registry)
@kopf.on.create(GROUP, VERSION, DK_PLURAL, id="dk-create", registry=registry)
@kopf.on.update(GROUP, VERSION, DK_PLURAL, id="dk-update", registry=registry)
async def reconcile_handler(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    if body.meta.get("deletionTimestamp"):
        return  # the Secret goes with the DataKey (ownerReference)
    outcome = await _reconcile(body, patch, memo)
    if outcome.retry_after is not None:
        raise kopf.TemporaryError(outcome.ready.message, delay=outcome.retry_after)


@kopf.timer(
    GROUP,
    VERSION,
    DK_PLURAL,
    id="dk-check",
    registry=registry,
    interval=CHECK_INTERVAL,
    initial_delay=CHECK_INTERVAL,
)
async def check(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Rotation, key state changes, a missing key appearing: see the package's docstring."""
    if body.meta.get("deletionTimestamp"):
        return
    view = DataKeyView.of(body)
    resync_due = time.monotonic() - memo.get("dk_last_full", 0.0) >= RESYNC_INTERVAL
    if resync_due or decisions.needs_reconcile(view.status, _lookup(memo.runtime.service, view)):
        await _reconcile(body, patch, memo)


async def _reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> Outcome:
    runtime: Runtime = memo.runtime
    lock: asyncio.Lock = memo.setdefault("dk_lock", asyncio.Lock())  # this object's memo
    async with lock:
        view = DataKeyView.of(body)
        found = await asyncio.to_thread(
            reconciling.reconcile, runtime, memo.dk_secrets, memo.dk_namespaces, view
        )
        memo["dk_last_full"] = time.monotonic()
    outcome = found.outcome
    patch.status.update(
        decisions.datakey_status(
            outcome,
            secret_name=view.spec.secret_name,
            existing_conditions=view.status.get("conditions"),
            generation=view.generation,
            now=runtime.service.clock.now(),
        )
    )
    await post_notices(
        runtime.objects, ObjectRef.of(DK_KIND, body), outcome.notices_to_post(view.ready)
    )
    if view.ready.get("reason") != outcome.ready.reason:
        for key_notice in found.key_notices:
            await asyncio.to_thread(_post_on_key, runtime.objects, key_notice)
    return outcome


def _post_on_key(objects: Objects, key_notice: decisions.KeyNotice) -> None:
    """Post on the key's object as it is now (its UID read first: Events name it)."""
    try:
        key = objects.get_cmk(key_notice.namespace, key_notice.name)
    except Exception:
        log.exception(
            "could not read key %s/%s to post %s on it",
            key_notice.namespace,
            key_notice.name,
            key_notice.notice.reason,
        )
        return
    uid = key["metadata"].get("uid") if key else None
    ref = ObjectRef(CMK_KIND, key_notice.namespace, key_notice.name, uid)
    post_notices_now(objects, ref, [key_notice.notice])


def _lookup(service: KeyService, view: DataKeyView) -> KeyRecord | None:
    try:
        return service.resolve(view.namespace, view.spec.reference)
    except NotFound:
        return None

"""Kopf's entry points for ``CustomerMasterKey``: parse, one call to the domain, status.

* create / update / resume: bind the object to its key (creating the key once), apply the
  spec and honour the ``kms.cmk.dev/rotate`` annotation in one
  :meth:`~kms_operator.keys.service.KeyService.apply_spec`, write the status and post the
  Events (:func:`~kms_operator.operator.outcomes.post_notices`);
* a terminating object: :func:`~.deleting.handle_deletion` holds, schedules, cancels or
  releases it.

The decisions are pure functions of the modules beside this one; what is here only moves data
between Kopf and them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import kopf

from kms_operator.contract import CMK_KIND, CMK_PLURAL, GROUP, SCHEDULED_DELETION_FINALIZER, VERSION
from kms_operator.errors import KmsError
from kms_operator.keys.service import KeyService, SpecResult
from kms_operator.kube.objects import NamespaceInfo

from .. import conditions
from ..outcomes import ObjectRef, Outcome, handler_error, post_notices, status_patch
from ..registries import registry
from ..runtime import Runtime
from .aliases import (
    ALIAS_CONFLICT,
    NO_ALIAS_CONFLICT,
    refresh_alias_conflicts,
    shows_conflict,
)
from .binding import Binding, bind_or_create, refused_outcome
from .deleting import handle_deletion
from .drift import report_detached
from .specs import (
    CustomerMasterKeySpec,
    applied_outcome,
    default_service_of,
    problem_reason,
    rotation_requested,
)

#: Seconds before a reconciliation retries when the object's namespace cannot be read.
NAMESPACE_RETRY_DELAY = 10


@kopf.on.resume(GROUP, VERSION, CMK_PLURAL, id="cmk-resume", registry=registry)
@kopf.on.create(GROUP, VERSION, CMK_PLURAL, id="cmk-create", registry=registry)
async def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    await _reconcile(body, patch, memo.runtime, rotate=False)


@kopf.on.update(GROUP, VERSION, CMK_PLURAL, id="cmk-update", registry=registry)
async def update(
    body: kopf.Body, old: Any, new: Any, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    await _reconcile(body, patch, memo.runtime, rotate=rotation_requested(old or {}, new or {}))


def _terminating(body: kopf.Body, **_: Any) -> bool:
    return bool(body.meta.get("deletionTimestamp"))


@kopf.on.event(GROUP, VERSION, CMK_PLURAL, id="cmk-deletion", registry=registry, when=_terminating)
async def deletion(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Hold, schedule, cancel or release a terminating object (idempotent).

    Kopf does not retry event handlers: :func:`handle_deletion` retries itself.
    """
    if not body.meta.get("deletionTimestamp") or SCHEDULED_DELETION_FINALIZER not in (
        body.meta.get("finalizers") or []
    ):
        return
    await handle_deletion(memo.runtime, dict(body))


async def _reconcile(body: kopf.Body, patch: kopf.Patch, runtime: Runtime, *, rotate: bool) -> None:
    if body.meta.get("deletionTimestamp"):
        return  # the deletion handler owns terminating objects
    namespace, name = body.metadata.namespace, body.metadata.name
    assert namespace is not None and name is not None and body.metadata.uid is not None
    spec = CustomerMasterKeySpec.parse(body.spec)
    finalizers = list(body.metadata.get("finalizers") or [])
    if SCHEDULED_DELETION_FINALIZER not in finalizers:
        patch.metadata["finalizers"] = [*finalizers, SCHEDULED_DELETION_FINALIZER]

    info = await asyncio.to_thread(runtime.objects.namespace_info, namespace)
    if info is None:
        raise kopf.TemporaryError(f"namespace {namespace} not found", delay=NAMESPACE_RETRY_DELAY)
    default_service = default_service_of(body.metadata.labels, spec.aliases)
    try:
        binding, applied = await asyncio.to_thread(
            _converge, runtime.service, dict(body), info, spec, default_service, rotate=rotate
        )
    except KmsError as exc:
        raise handler_error(exc) from None
    await asyncio.to_thread(report_detached, runtime.objects, binding.detached)
    if applied is None:
        assert binding.problem is not None
        outcome = refused_outcome(binding.problem)
    else:
        conflict = NO_ALIAS_CONFLICT
        if shows_conflict(body.status) or any(
            problem_reason(p) == ALIAS_CONFLICT for p in applied.problems
        ):
            conflict = await asyncio.to_thread(refresh_alias_conflicts, runtime, namespace, name)
        outcome = applied_outcome(
            applied, created=binding.created, rotate=rotate, alias_conflict=conflict
        )
    await _write(body, patch, runtime, outcome)
    if applied is not None:
        runtime.scheduler.wake()


def _converge(
    service: KeyService,
    body: Mapping[str, Any],
    info: NamespaceInfo,
    spec: CustomerMasterKeySpec,
    default_service: str | None,
    *,
    rotate: bool,
) -> tuple[Binding, SpecResult | None]:
    """The object's key, and the spec applied to it (None: the object holds no key)."""
    binding = bind_or_create(service, body, info, spec, default_service)
    if binding.record is None:
        return binding, None
    return binding, service.apply_spec(binding.record.key_id, spec.settings, rotate=rotate)


async def _write(body: kopf.Body, patch: kopf.Patch, runtime: Runtime, outcome: Outcome) -> None:
    """The outcome as the status patch Kopf applies, and its Events."""
    existing = body.status.get("conditions")
    patch.status.update(
        status_patch(
            outcome,
            existing_conditions=existing,
            generation=body.metadata.get("generation"),
            now=runtime.service.clock.now(),
        )
    )
    previous_ready = conditions.find_condition(existing, conditions.READY)
    await post_notices(
        runtime.objects, ObjectRef.of(CMK_KIND, body), outcome.notices_to_post(previous_ready)
    )

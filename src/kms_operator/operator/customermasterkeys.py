"""Kopf handlers for ``CustomerMasterKey``: thin translators over :class:`KeyService`.

* create / update / resume: bind the object to its key (creating it once), apply the spec,
  honour the ``kms.cmk.dev/rotate`` annotation, write the status;
* deletion: the ``kms.cmk.dev/scheduled-deletion`` finalizer holds the object while the key is
  PendingDeletion; the scheduler destroys the key at its date and releases the object;
* cancellation: ``kms.cmk.dev/cancel-deletion=true`` on a terminating object cancels in the
  store, releases the object and recreates it from its last spec, Disabled, bound to the same key.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from kms_operator.errors import AliasConflict, DefaultKeyProtected, InvalidRequest, KmsError
from kms_operator.keys.service import (
    DEFAULT_ALIAS_PREFIX,
    DEFAULT_PENDING_WINDOW_DAYS,
    KeyService,
)
from kms_operator.kube.objects import API_VERSION, CMK_KIND, CMK_PLURAL, GROUP, VERSION
from kms_operator.store.records import KeyRecord, KeyState, Origin

from . import conditions, statuses
from .conditions import Condition
from .registries import KOPF_PREFIX, registry
from .runtime import Runtime
from .scheduling import FINALIZER

log = logging.getLogger(__name__)

ROTATE_ANNOTATION = "kms.cmk.dev/rotate"
CANCEL_DELETION_ANNOTATION = "kms.cmk.dev/cancel-deletion"
DEFAULT_LABEL = "kms.cmk.dev/default"


@dataclass(frozen=True)
class CustomerMasterKeySpec:
    """``spec`` as the CRD schema guarantees it (defaults applied by the API server)."""

    description: str
    aliases: tuple[str, ...]
    origin: Origin
    enabled: bool
    rotation_period_days: int | None
    pending_window_days: int

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> CustomerMasterKeySpec:
        rotation = spec.get("rotation") or {}
        return cls(
            description=str(spec.get("description") or ""),
            aliases=tuple(spec.get("aliases") or ()),
            origin=Origin(spec.get("origin") or Origin.KMS.value),
            enabled=bool(spec.get("enabled", True)),
            rotation_period_days=rotation.get("periodDays"),
            pending_window_days=int(spec.get("pendingWindowDays") or DEFAULT_PENDING_WINDOW_DAYS),
        )


def default_service_of(labels: Mapping[str, str], aliases: tuple[str, ...]) -> str | None:
    """A default key is labelled ``kms.cmk.dev/default=true`` and named by ``alias/kms/<svc>``."""
    if labels.get(DEFAULT_LABEL) != "true":
        return None
    for alias in aliases:
        if alias.startswith(DEFAULT_ALIAS_PREFIX):
            return alias.removeprefix(DEFAULT_ALIAS_PREFIX)
    return None


@kopf.on.resume(GROUP, VERSION, CMK_PLURAL, id="cmk-resume", registry=registry)
@kopf.on.create(GROUP, VERSION, CMK_PLURAL, id="cmk-create", registry=registry)
async def reconcile(
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    await _reconcile(body, patch, memo.runtime, rotate=False)


@kopf.on.update(GROUP, VERSION, CMK_PLURAL, id="cmk-update", registry=registry)
async def update(
    body: kopf.Body,
    old: Any,
    new: Any,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    before = (old.get("metadata") or {}).get("annotations") or {}
    after = (new.get("metadata") or {}).get("annotations") or {}
    rotate = after.get(ROTATE_ANNOTATION) not in (None, before.get(ROTATE_ANNOTATION))
    await _reconcile(body, patch, memo.runtime, rotate=rotate)


async def _reconcile(body: kopf.Body, patch: kopf.Patch, runtime: Runtime, *, rotate: bool) -> None:
    if body.meta.get("deletionTimestamp"):
        return  # the deletion handler owns terminating objects
    namespace, name = body.metadata.namespace, body.metadata.name
    assert namespace is not None and name is not None
    spec = CustomerMasterKeySpec.parse(body.spec)
    service = runtime.service
    problems: list[tuple[str, str]] = []

    finalizers = list(body.metadata.get("finalizers") or [])
    if FINALIZER not in finalizers:
        patch.metadata["finalizers"] = [*finalizers, FINALIZER]

    record = service.find(namespace, name)
    bound_id = body.status.get("keyId")
    if record is None and bound_id:
        # The object says it has a key, the store does not: never paper over it with a new key.
        message = (
            f"status.keyId {bound_id} is not in the store (a store restored from an older "
            "backup, or a different store): no key was created; restore the store"
        )
        kopf.warn(body, reason=conditions.KEY_MISSING_FROM_STORE, message=message)
        patch.status["conditions"] = conditions.merge_conditions(
            body.status.get("conditions"),
            [
                Condition(conditions.READY, False, conditions.KEY_MISSING_FROM_STORE, message),
                Condition(conditions.IN_STORE, False, conditions.KEY_MISSING_FROM_STORE, message),
            ],
            generation=body.metadata.get("generation"),
            now=service.clock.now(),
        )
        return
    default_service = default_service_of(body.metadata.labels, spec.aliases)
    if record is None:
        try:
            record = await asyncio.to_thread(
                _create, service, namespace, name, spec, default_service
            )
        except KmsError as exc:
            raise _handler_error(exc) from None
        kopf.event(
            body, type="Normal", reason=conditions.CREATED, message=f"created key {record.key_id}"
        )

    record = await _apply_spec(service, record, spec, rotate=rotate, problems=problems)
    for reason, message in problems:
        kopf.warn(body, reason=reason, message=message)
    if rotate and not problems:
        kopf.event(
            body,
            type="Normal",
            reason=conditions.ROTATED,
            message=f"rotated on demand to version {record.current_version}",
        )
    had_conflict = any(
        c.get("type") == conditions.ALIAS_CONFLICT and c.get("status") == "True"
        for c in body.status.get("conditions") or ()
    )
    conflict: Condition | None = None
    if had_conflict or any(r == conditions.ALIAS_CONFLICT for r, _ in problems):
        conflict = await asyncio.to_thread(_refresh_alias_conflicts, runtime, namespace, name)
    synced = Condition(
        conditions.SYNCED,
        not problems,
        problems[0][0] if problems else conditions.APPLIED,
        "; ".join(m for _, m in problems) if problems else "the spec is applied",
    )
    patch.status.update(
        statuses.key_status(
            record,
            existing_conditions=body.status.get("conditions"),
            extra_conditions=[synced, conflict or alias_conflict_condition(name, (), {})],
            generation=body.metadata.get("generation"),
            now=service.clock.now(),
        )
    )
    runtime.scheduler.wake()


def _create(
    service: KeyService,
    namespace: str,
    name: str,
    spec: CustomerMasterKeySpec,
    default_service: str | None,
) -> KeyRecord:
    """Create the key with its whole spec in one transaction when the spec is valid; else
    create it bare, and let the field-by-field apply report what is wrong."""
    create = functools.partial(
        service.create_key,
        namespace,
        name,
        origin=spec.origin,
        description=spec.description,
        enabled=spec.enabled or default_service is not None,
        default_service=default_service,
    )
    try:
        return create(aliases=spec.aliases, rotation_period_days=spec.rotation_period_days)
    except (InvalidRequest, AliasConflict):
        reserved = tuple(a for a in spec.aliases if a.startswith(DEFAULT_ALIAS_PREFIX))
        return create(aliases=reserved if default_service else ())


async def _apply_spec(
    service: KeyService,
    record: KeyRecord,
    spec: CustomerMasterKeySpec,
    *,
    rotate: bool,
    problems: list[tuple[str, str]],
) -> KeyRecord:
    """Apply each field separately, so one refused field does not block the others."""
    key_id = record.key_id
    steps: list[tuple[Any, tuple[Any, ...]]] = [
        (service.set_description, (key_id, spec.description)),
        (service.set_enabled, (key_id, spec.enabled)),
        (service.set_aliases, (key_id, spec.aliases)),
    ]
    if spec.origin is Origin.KMS:
        steps.append((service.set_rotation_period, (key_id, spec.rotation_period_days)))
    if rotate:
        steps.append((service.rotate, (key_id,)))
    for method, args in steps:
        try:
            await asyncio.to_thread(method, *args)
        except KmsError as exc:
            if exc.retryable:
                raise _handler_error(exc) from None
            problems.append((_reason_of(exc), exc.message))
    return service.get(key_id)


def _reason_of(exc: KmsError) -> str:
    if isinstance(exc, DefaultKeyProtected):
        return conditions.DEFAULT_KEY_PROTECTED
    if exc.code == "AlreadyExists":
        return conditions.ALIAS_CONFLICT
    return conditions.INVALID_SPEC


def alias_claims(items: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Which live objects of one namespace ask for each alias (terminating ones do not count)."""
    claims: dict[str, list[str]] = {}
    for item in items:
        if item["metadata"].get("deletionTimestamp"):
            continue
        for alias in (item.get("spec") or {}).get("aliases") or ():
            claims.setdefault(alias, []).append(item["metadata"]["name"])
    return claims


def alias_conflict_condition(name: str, aliases: Any, claims: dict[str, list[str]]) -> Condition:
    """Both sides of a clash see it: the key holding an alias and the one asking for it."""
    clashes = sorted(
        f"{alias} (also claimed by {', '.join(sorted(set(claims[alias]) - {name}))})"
        for alias in aliases or ()
        if len(set(claims.get(alias, ())) | {name}) > 1
    )
    if clashes:
        return Condition(
            conditions.ALIAS_CONFLICT,
            True,
            conditions.ALIAS_CONFLICT,
            "aliases claimed by more than one key in the namespace: " + "; ".join(clashes),
        )
    return Condition(conditions.ALIAS_CONFLICT, False, conditions.NO_CONFLICT, "no alias conflict")


def _refresh_alias_conflicts(runtime: Runtime, namespace: str, skip: str) -> Condition | None:
    """Recompute AliasConflict on every key of the namespace; return the one for ``skip``.

    Others are patched here; ``skip`` (the object being reconciled) gets its condition through
    the handler's own status patch, so the two writes never race.
    """
    items = runtime.objects.list_cmks(namespace)
    claims = alias_claims(items)
    own = None
    for item in items:
        meta = item["metadata"]
        wanted = alias_conflict_condition(
            meta["name"], (item.get("spec") or {}).get("aliases"), claims
        )
        if meta["name"] == skip:
            own = wanted
            continue
        current = next(
            (
                c
                for c in (item.get("status") or {}).get("conditions") or ()
                if c.get("type") == conditions.ALIAS_CONFLICT
            ),
            None,
        )
        if meta.get("deletionTimestamp") or not (item.get("status") or {}).get("keyId"):
            continue
        if (
            current is None
            or (current.get("status") == "True") != wanted.status
            or (current.get("message") != wanted.message)
        ):
            runtime.objects.patch_cmk_status(
                namespace,
                meta["name"],
                {
                    "conditions": conditions.merge_conditions(
                        (item.get("status") or {}).get("conditions"),
                        [wanted],
                        generation=None,
                        now=runtime.service.clock.now(),
                    )
                },
            )
    return own


def _handler_error(exc: KmsError) -> Exception:
    if exc.retryable:
        return kopf.TemporaryError(exc.message, delay=10)
    return kopf.PermanentError(exc.message)


# -- deletion ------------------------------------------------------------------------------


def _terminating(body: kopf.Body, **_: Any) -> bool:
    return bool(body.meta.get("deletionTimestamp"))


@kopf.on.event(GROUP, VERSION, CMK_PLURAL, id="cmk-deletion", registry=registry, when=_terminating)
async def deletion(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Hold, schedule, cancel or release a terminating object (no Kopf retries: idempotent)."""
    if not body.meta.get("deletionTimestamp") or FINALIZER not in (
        body.meta.get("finalizers") or []
    ):
        return
    runtime: Runtime = memo.runtime
    try:
        await asyncio.to_thread(_handle_deletion, runtime, dict(body))
    except Exception:
        log.exception(
            "deletion of %s/%s could not be handled; will retry on the next event",
            body.metadata.namespace,
            body.metadata.name,
        )


def _handle_deletion(runtime: Runtime, body: dict[str, Any]) -> None:
    service, objects = runtime.service, runtime.objects
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid")
    record = service.find(namespace, name)
    if record is None:
        # Destroyed already (or never created): nothing left to protect.
        objects.remove_finalizer(body, FINALIZER)
        return
    annotations = meta.get("annotations") or {}
    if record.is_default:
        objects.post_event(
            namespace,
            name,
            uid,
            type_="Warning",
            reason=conditions.DEFAULT_KEY_PROTECTED,
            message="default keys cannot be deleted: the object is recreated and the key "
            "keeps working",
        )
        _recreate(runtime, body, enabled=True)
        return
    if annotations.get(CANCEL_DELETION_ANNOTATION) == "true":
        if record.state is KeyState.PENDING_DELETION:
            service.cancel_deletion(record.key_id)
        objects.post_event(
            namespace,
            name,
            uid,
            type_="Normal",
            reason=conditions.DELETION_CANCELLED,
            message=f"deletion cancelled: key {record.key_id} is kept, Disabled; set "
            "spec.enabled: true to use it again",
        )
        _recreate(runtime, body, enabled=False)
        return
    spec = CustomerMasterKeySpec.parse(body.get("spec") or {})
    was_pending = record.state is KeyState.PENDING_DELETION
    record = service.schedule_deletion(record.key_id, spec.pending_window_days)
    status = body.get("status") or {}
    objects.patch_cmk_status(
        namespace,
        name,
        statuses.key_status(
            record,
            existing_conditions=status.get("conditions"),
            generation=meta.get("generation"),
            now=service.clock.now(),
        ),
    )
    if not was_pending:
        objects.post_event(
            namespace,
            name,
            uid,
            type_="Warning",
            reason=conditions.DELETION_SCHEDULED,
            message=f"key {record.key_id} will be destroyed at "
            f"{conditions.rfc3339(record.deletion_date)} (a namespace being deleted waits "
            f"until then); annotate {CANCEL_DELETION_ANNOTATION}=true to cancel",
        )
    runtime.scheduler.wake()


def _recreate(runtime: Runtime, body: dict[str, Any], *, enabled: bool) -> None:
    """Release the terminating object and create it again from its last spec.

    Kubernetes cannot undo a deletion; the new object has the same namespace and name, so it
    binds to the same key (same key id, same versions).
    """
    meta = body["metadata"]
    objects = runtime.objects
    objects.remove_finalizer(body, FINALIZER)
    annotations = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if k != CANCEL_DELETION_ANNOTATION
        and not k.startswith(KOPF_PREFIX + "/")
        and k != "kubectl.kubernetes.io/last-applied-configuration"
    }
    spec = dict(body.get("spec") or {})
    spec["enabled"] = enabled
    fresh = {
        "apiVersion": API_VERSION,
        "kind": CMK_KIND,
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": meta.get("labels") or {},
            "annotations": annotations,
        },
        "spec": spec,
    }
    # The old object disappears once its last finalizer is gone; wait for that, then create.
    for _ in range(100):
        current = objects.get_cmk(meta["namespace"], meta["name"])
        if current is None or current["metadata"].get("uid") != meta.get("uid"):
            break
        if FINALIZER in (current["metadata"].get("finalizers") or []):
            objects.remove_finalizer(current, FINALIZER)
        time.sleep(0.1)
    if objects.get_cmk(meta["namespace"], meta["name"]) is None:
        objects.create_cmk(meta["namespace"], fresh)


# -- admission (optional: the operator works without it) ----------------------------------


# The id is the keyword under which Kopf hands the index to other handlers.
@kopf.index(GROUP, VERSION, CMK_PLURAL, id="cmk_aliases", registry=registry)
def cmk_aliases(
    namespace: str | None, name: str | None, spec: kopf.Spec, meta: kopf.Meta, **_: Any
) -> dict[tuple[str | None, str], str | None]:
    """Every live object's aliases, so admission sees clashes across the namespace."""
    if meta.get("deletionTimestamp"):
        return {}
    return {(namespace, alias): name for alias in spec.get("aliases") or ()}


def admission_problem(
    operation: str,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    alias_owners: Mapping[str, set[str]],
) -> str | None:
    """Why a request must be refused, or None. A pure function: the webhook only wraps it.

    Only what a request *changes* is judged, so the operator's own writes (finalizers,
    recreating an object after a cancelled deletion) always pass.
    """
    body = new if new is not None else old
    if body is None:
        return None
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    name = meta.get("name")
    is_default = (meta.get("labels") or {}).get(DEFAULT_LABEL) == "true"
    was_default = (
        old is not None
        and ((old.get("metadata") or {}).get("labels") or {}).get(DEFAULT_LABEL) == "true"
    )
    if operation == "DELETE":
        return "default keys cannot be deleted" if was_default else None
    if was_default and not is_default:
        return f"the {DEFAULT_LABEL} label of a default key cannot be removed"
    old_spec = (old or {}).get("spec") or {}
    if is_default and operation == "UPDATE":
        if spec.get("enabled") is False and old_spec.get("enabled") is not False:
            return "default keys cannot be disabled (spec.enabled must stay true)"
        before = ((old or {}).get("metadata") or {}).get("annotations") or {}
        after = meta.get("annotations") or {}
        if after.get(ROTATE_ANNOTATION) != before.get(ROTATE_ANNOTATION):
            return "default keys cannot be rotated on demand (kms.cmk.dev/rotate)"
    added = set(spec.get("aliases") or ()) - set(old_spec.get("aliases") or ())
    for alias in sorted(added):
        if alias.startswith(DEFAULT_ALIAS_PREFIX) and not is_default:
            return (
                f"spec.aliases: {alias!r} is reserved: {DEFAULT_ALIAS_PREFIX}… names default keys"
            )
        others = alias_owners.get(alias, set()) - {name}
        if others:
            return (
                f"spec.aliases: {alias!r} already names key {', '.join(sorted(others))} "
                "in this namespace"
            )
    return None


def validate(**kwargs: Any) -> None:
    old, new, namespace = kwargs["old"], kwargs["new"], kwargs["namespace"]
    try:
        index: kopf.Index[tuple[str | None, str], str | None] = kwargs["cmk_aliases"]
        body = new if new is not None else old
        aliases = (body or {}).get("spec", {}).get("aliases") or ()
        owners = {a: {str(n) for n in index.get((namespace, a), [])} for a in aliases}
        problem = admission_problem(kwargs.get("operation") or "", old, new, owners)
    except Exception:
        # A fault of ours must not block every write (the operator's own included): admit,
        # and let the reconciliation refuse with Events and conditions as without a webhook.
        log.exception("admission check failed; admitting the request")
        return
    if problem is not None:
        raise kopf.AdmissionError(problem, code=422)


def register_admission() -> None:
    """Add the validating webhook; only with a webhook server (Kopf refuses one without)."""
    kopf.on.validate(
        GROUP,
        VERSION,
        CMK_PLURAL,
        id="cmk-admission",
        registry=registry,
        operations=["CREATE", "UPDATE", "DELETE"],
        # When the operator is down, requests pass; Events and conditions still explain.
        ignore_failures=True,
    )(validate)


# -- drift ---------------------------------------------------------------------------------


def report_keys_without_objects(runtime: Runtime) -> int:
    """At start-up: every live key in the store whose object is gone gets an Event and a log."""
    watched = runtime.settings.namespaces
    items = (
        [item for ns in watched for item in runtime.objects.list_cmks(ns)]
        if watched
        else runtime.objects.list_cmks()
    )
    present = {(item["metadata"]["namespace"], item["metadata"]["name"]) for item in items}
    missing = 0
    for record in runtime.service.keys():
        if watched and record.namespace not in watched:
            continue
        if record.state is KeyState.DESTROYED or (record.namespace, record.name) in present:
            continue
        missing += 1
        message = (
            f"key {record.key_id} ({record.state}) is in the store but its CustomerMasterKey "
            "is gone; recreate the object with the same name to bind it again"
        )
        log.warning("drift: %s/%s: %s", record.namespace, record.name, message)
        try:
            runtime.objects.post_event(
                record.namespace,
                record.name,
                None,
                type_="Warning",
                reason=conditions.KEY_WITHOUT_OBJECT,
                message=message,
            )
        except Exception:
            log.exception("could not post the drift event for %s", record.key_id)
    return missing

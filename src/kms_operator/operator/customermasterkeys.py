"""Kopf handlers for ``CustomerMasterKey``: thin translators over :class:`KeyService`.

* create / update / resume: bind the object to its key (by namespace UID, object UID and name,
  creating the key once), apply the spec, honour the ``kms.cmk.dev/rotate`` annotation, write
  the status;
* deletion: the ``kms.cmk.dev/scheduled-deletion`` finalizer holds the object while the key is
  PendingDeletion; the scheduler destroys the key at its date and releases the object. In a
  namespace being deleted, default keys go too (the next namespace of that name starts afresh);
* cancellation: ``kms.cmk.dev/cancel-deletion=true`` on a terminating object cancels in the
  store, releases the object and recreates it from its last spec, Disabled, annotated
  ``kms.cmk.dev/key-id`` so that it binds to the same key.

Failures of the deletion handling are retried with back-off and shown as Events and
``Synced=False`` (reason ``DeletionFailed``), never swallowed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import kopf

from kms_operator.contract import (
    API_VERSION,
    CANCEL_DELETION_ANNOTATION,
    CMK_KIND,
    CMK_PLURAL,
    DEFAULT_LABEL,
    GROUP,
    KEY_ID_ANNOTATION,
    KOPF_PREFIX,
    ROTATE_ANNOTATION,
    SCHEDULED_DELETION_FINALIZER,
    VERSION,
    WEBHOOK_CONFIGURATION,
)
from kms_operator.errors import (
    AliasConflict,
    DefaultKeyProtected,
    InvalidRequest,
    KeyBoundElsewhere,
    KmsError,
    NotFound,
)
from kms_operator.keys.service import (
    DEFAULT_ALIAS_PREFIX,
    DEFAULT_PENDING_WINDOW_DAYS,
    KeyService,
)
from kms_operator.kube.objects import NamespaceInfo, Objects
from kms_operator.store.records import KeyRecord, KeyState, Origin
from kms_operator.timestamps import rfc3339_or_none

from . import conditions, statuses
from .conditions import Condition
from .registries import registry
from .runtime import Runtime

log = logging.getLogger(__name__)

#: Polls (0.1 s apart) for a released object to disappear before it is created again.
_GONE_POLLS = 100


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
    namespace, name, uid = body.metadata.namespace, body.metadata.name, body.metadata.uid
    assert namespace is not None and name is not None and uid is not None
    spec = CustomerMasterKeySpec.parse(body.spec)
    service = runtime.service
    problems: list[tuple[str, str]] = []

    finalizers = list(body.metadata.get("finalizers") or [])
    if SCHEDULED_DELETION_FINALIZER not in finalizers:
        patch.metadata["finalizers"] = [*finalizers, SCHEDULED_DELETION_FINALIZER]

    info = await asyncio.to_thread(runtime.objects.namespace_info, namespace)
    if info is None:
        raise kopf.TemporaryError(f"namespace {namespace} not found", delay=10)
    default_service = default_service_of(body.metadata.labels, spec.aliases)
    try:
        binding = await asyncio.to_thread(
            _bind_or_create, service, body, info, spec, default_service
        )
    except KmsError as exc:
        raise _handler_error(exc) from None
    await asyncio.to_thread(report_detached, runtime.objects, binding.detached)
    if binding.problem is not None:
        reason, message = binding.problem
        kopf.warn(body, reason=reason, message=message)
        refused = [Condition(conditions.READY, False, reason, message)]
        if reason == conditions.KEY_MISSING_FROM_STORE:
            refused.append(Condition(conditions.IN_STORE, False, reason, message))
        patch.status["conditions"] = conditions.merge_conditions(
            body.status.get("conditions"),
            refused,
            generation=body.metadata.get("generation"),
            now=service.clock.now(),
        )
        return
    record = binding.record
    assert record is not None
    if binding.created:
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


# -- binding -------------------------------------------------------------------------------


@dataclass
class Binding:
    """What binding an object found: its key, or why it has none (``problem``: reason and
    message), and the keys of earlier namespaces or objects detached on the way."""

    record: KeyRecord | None
    created: bool = False
    detached: list[KeyRecord] = field(default_factory=list)
    problem: tuple[str, str] | None = None


def claim_of(meta: Mapping[str, Any], status: Mapping[str, Any]) -> tuple[str, str] | None:
    """The key id the object claims and where it says so: its own ``status.keyId``, else the
    ``kms.cmk.dev/key-id`` annotation; None when it claims none."""
    if status.get("keyId"):
        return str(status["keyId"]), "status.keyId"
    claimed = (meta.get("annotations") or {}).get(KEY_ID_ANNOTATION)
    if claimed:
        return str(claimed), f"the annotation {KEY_ID_ANNOTATION}"
    return None


def parse_key_id(text: str) -> uuid.UUID | None:
    """A key id in its one canonical spelling (lower-case, hyphenated), or None."""
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        return None
    return parsed if str(parsed) == text else None


def _bind(service: KeyService, body: Mapping[str, Any], info: NamespaceInfo) -> Binding:
    """The key this object holds, without creating one (see :meth:`KeyService.bind`)."""
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    detached = service.observe_namespace(namespace, info.uid)
    claim = claim_of(meta, body.get("status") or {})
    claimed_id = None
    if claim is not None:
        claimed_id = parse_key_id(claim[0])
        if claimed_id is None:
            return Binding(
                None,
                detached=detached,
                problem=(
                    conditions.INVALID_SPEC,
                    f"{claim[1]}: {claim[0][:64]!r} is not a key id (the canonical lower-case "
                    "UUID text): no key was bound or created",
                ),
            )
    before = service.find(namespace, name)
    try:
        record = service.bind(
            namespace, name, namespace_uid=info.uid, object_uid=uid, claimed_key_id=claimed_id
        )
    except KeyBoundElsewhere as exc:
        return Binding(
            None, detached=detached, problem=(conditions.KEY_BOUND_ELSEWHERE, exc.message)
        )
    if record is None and before is not None:
        after = service.get(before.key_id)
        if after.is_detached:
            detached.append(after)
    if record is not None or claim is None or claimed_id is None:
        return Binding(record, detached=detached)
    return Binding(None, detached=detached, problem=_claim_refused(service, claimed_id, claim[1]))


def _claim_refused(service: KeyService, key_id: uuid.UUID, source: str) -> tuple[str, str]:
    try:
        service.get(key_id)
    except NotFound:
        # The object says it has a key, the store does not: never paper over it with a new key.
        return (
            conditions.KEY_MISSING_FROM_STORE,
            f"{source} names key {key_id}, which is not in the store (a store restored from an "
            "older backup, or a different store): no key was created; restore the store",
        )
    # Which of the reasons it is stays unsaid: the key may be another tenant's.
    return (
        conditions.KEY_CLAIM_REFUSED,
        f"{source} names key {key_id}, which this object cannot take (it is not a live key of "
        "this name in this namespace): no key was bound or created; remove the annotation "
        "to get a new key",
    )


def _bind_or_create(
    service: KeyService,
    body: Mapping[str, Any],
    info: NamespaceInfo,
    spec: CustomerMasterKeySpec,
    default_service: str | None,
) -> Binding:
    binding = _bind(service, body, info)
    if binding.record is not None or binding.problem is not None:
        return binding
    meta = body["metadata"]
    binding.record = _create(
        service,
        meta["namespace"],
        meta["name"],
        spec,
        default_service,
        namespace_uid=info.uid,
        object_uid=meta["uid"],
    )
    binding.created = True
    return binding


def report_detached(objects: Objects, records: list[KeyRecord]) -> None:
    """A Warning Event (``KeyWithoutObject``) and a log line for each detached key."""
    for record in records:
        _report_key_without_object(objects, record, detached_message(record))


def _report_key_without_object(objects: Objects, record: KeyRecord, message: str) -> None:
    """A log line and, best effort, a ``KeyWithoutObject`` Warning on the key's name."""
    log.warning("key without object: %s/%s: %s", record.namespace, record.name, message)
    try:
        objects.post_event(
            record.namespace,
            record.name,
            None,
            type_="Warning",
            reason=conditions.KEY_WITHOUT_OBJECT,
            message=message,
        )
    except Exception as exc:
        log.warning(
            "could not post the KeyWithoutObject Event of key %s (%s)",
            record.key_id,
            describe_error(exc),
        )


def detached_message(record: KeyRecord) -> str:
    schedule = (
        f"it is destroyed at {rfc3339_or_none(record.deletion_date)}"
        if record.deletion_date is not None
        else "no deletion is scheduled"
    )
    return (
        f"key {record.key_id} ({record.state}) belonged to an earlier namespace or object named "
        f"{record.namespace}/{record.name} and is detached: no name, alias or key id in this "
        f"namespace reaches it and its blobs do not decrypt; it keeps its own schedule "
        f"({schedule})"
    )


def _create(
    service: KeyService,
    namespace: str,
    name: str,
    spec: CustomerMasterKeySpec,
    default_service: str | None,
    *,
    namespace_uid: str,
    object_uid: str,
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
        namespace_uid=namespace_uid,
        object_uid=object_uid,
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
    """Hold, schedule, cancel or release a terminating object (idempotent).

    Kopf does not retry event handlers: :func:`handle_deletion` retries itself.
    """
    if not body.meta.get("deletionTimestamp") or SCHEDULED_DELETION_FINALIZER not in (
        body.meta.get("finalizers") or []
    ):
        return
    await handle_deletion(memo.runtime, dict(body))


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
        await _recreate(runtime, body, fresh)


def _handle_deletion(runtime: Runtime, body: dict[str, Any]) -> dict[str, Any] | None:
    """Schedule, cancel or refuse; returns the object to create again (cancelled deletion,
    refused default-key deletion) or None."""
    service, objects = runtime.service, runtime.objects
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid")
    info = objects.namespace_info(namespace)
    if info is None:
        raise KmsError(f"namespace {namespace} not found")
    binding = _bind(service, body, info)
    report_detached(objects, binding.detached)
    record = binding.record
    if record is None:
        # Destroyed already, never created, or another object's key: nothing to protect here.
        objects.remove_finalizer(body, SCHEDULED_DELETION_FINALIZER)
        return None
    annotations = meta.get("annotations") or {}
    if record.is_default and not info.terminating:
        _announce(
            objects,
            namespace,
            name,
            uid,
            type_="Warning",
            reason=conditions.DEFAULT_KEY_PROTECTED,
            message="default keys cannot be deleted: the object is recreated and the key "
            "keeps working",
        )
        return fresh_object(body, record, enabled=True)
    if annotations.get(CANCEL_DELETION_ANNOTATION) == "true":
        if not info.terminating:
            if record.state is KeyState.PENDING_DELETION:
                service.cancel_deletion(record.key_id)
            _announce(
                objects,
                namespace,
                name,
                uid,
                type_="Normal",
                reason=conditions.DELETION_CANCELLED,
                message=f"deletion cancelled: key {record.key_id} is kept, Disabled; set "
                "spec.enabled: true to use it again",
            )
            return fresh_object(body, record, enabled=False)
        _announce(
            objects,
            namespace,
            name,
            uid,
            type_="Warning",
            reason=conditions.NAMESPACE_TERMINATING,
            message=f"the deletion of key {record.key_id} cannot be cancelled: namespace "
            f"{namespace} is being deleted and no object can be created in it again",
        )
    spec = CustomerMasterKeySpec.parse(body.get("spec") or {})
    _schedule(
        runtime, body, record, spec.pending_window_days, namespace_terminating=info.terminating
    )
    return None


def _schedule(
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
    date = rfc3339_or_none(record.deletion_date)
    if namespace_terminating:
        why = (
            f"namespace {record.namespace} is being deleted: "
            + ("its default key goes with it; " if record.is_default else "")
            + f"key {record.key_id} will be destroyed at {date}, and the namespace waits until "
            "then (a namespace created again with this name gets new keys)"
        )
    else:
        why = (
            f"key {record.key_id} will be destroyed at {date}; annotate "
            f"{CANCEL_DELETION_ANNOTATION}=true to cancel"
        )
    meta = (body or {}).get("metadata") or {}
    if body is not None:
        status = body.get("status") or {}
        objects.patch_cmk_status(
            record.namespace,
            record.name,
            statuses.key_status(
                record,
                existing_conditions=status.get("conditions"),
                extra_conditions=[
                    Condition(conditions.SYNCED, True, conditions.DELETION_SCHEDULED, why)
                ],
                generation=meta.get("generation"),
                now=service.clock.now(),
            ),
        )
    if not was_pending:
        _announce(
            objects,
            record.namespace,
            record.name,
            meta.get("uid"),
            type_="Warning",
            reason=conditions.DELETION_SCHEDULED,
            message=why,
        )
    runtime.scheduler.wake()
    return record


def _announce(
    objects: Objects,
    namespace: str,
    name: str,
    uid: str | None,
    *,
    type_: str,
    reason: str,
    message: str,
) -> None:
    """An Event, best effort: the API server refuses new Events in a namespace being deleted
    (the status condition and the log line still say it)."""
    log.info("%s/%s: %s: %s", namespace, name, reason, message)
    try:
        objects.post_event(namespace, name, uid, type_=type_, reason=reason, message=message)
    except Exception as exc:
        log.warning(
            "could not post the %s Event of %s/%s (%s)",
            reason,
            namespace,
            name,
            describe_error(exc),
        )


def _report_failure(
    runtime: Runtime, body: dict[str, Any], doing: str, exc: Exception, delay: float
) -> None:
    """A failure, where the user looks: a log line, a Warning Event and ``Synced=False``."""
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid")
    message = f"{doing} failed ({describe_error(exc)}); retrying in {delay:g} s"
    log.warning("%s/%s: %s", namespace, name, message, exc_info=exc)
    try:
        runtime.objects.post_event(
            namespace,
            name,
            uid,
            type_="Warning",
            reason=conditions.DELETION_FAILED,
            message=message,
        )
    except Exception:
        log.warning("could not post the DeletionFailed Event of %s/%s", namespace, name)
    try:
        runtime.objects.patch_cmk_status(
            namespace,
            name,
            {
                "conditions": conditions.merge_conditions(
                    (body.get("status") or {}).get("conditions"),
                    [Condition(conditions.SYNCED, False, conditions.DELETION_FAILED, message)],
                    generation=None,
                    now=runtime.service.clock.now(),
                )
            },
        )
    except Exception:
        log.warning("could not write the DeletionFailed condition of %s/%s", namespace, name)


def describe_error(exc: BaseException) -> str:
    """A short, secret-free description: our message, an HTTP status, or the type."""
    if isinstance(exc, KmsError):
        return exc.message
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return f"the API server answered {status} {getattr(exc, 'reason', '') or ''}".strip()
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def fresh_object(body: Mapping[str, Any], record: KeyRecord, *, enabled: bool) -> dict[str, Any]:
    """The object to create again from a terminating one: its last spec, its labels, its
    annotations (without ours and Kopf's bookkeeping) and ``kms.cmk.dev/key-id``, so that it
    binds to the same key (same key id, same versions)."""
    meta = body["metadata"]
    annotations = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if k != CANCEL_DELETION_ANNOTATION
        and not k.startswith(KOPF_PREFIX + "/")
        and k != "kubectl.kubernetes.io/last-applied-configuration"
    }
    annotations[KEY_ID_ANNOTATION] = str(record.key_id)
    spec = dict(body.get("spec") or {})
    spec["enabled"] = enabled
    return {
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


async def _recreate(runtime: Runtime, body: dict[str, Any], fresh: dict[str, Any]) -> None:
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
        record = runtime.service.get(uuid.UUID(fresh["metadata"]["annotations"][KEY_ID_ANNOTATION]))
        spec = CustomerMasterKeySpec.parse(fresh.get("spec") or {})
        await asyncio.to_thread(
            _schedule, runtime, None, record, spec.pending_window_days, namespace_terminating=True
        )
        return
    log.info(
        "created %s/%s again, bound to key %s",
        namespace,
        name,
        fresh["metadata"]["annotations"][KEY_ID_ANNOTATION],
    )


# -- admission (optional: the operator works without it) ----------------------------------


def alias_owners(service: KeyService, namespace: str, aliases: Any) -> dict[str, set[str]]:
    """Which key object holds each alias in the store (the store decides who keeps one).

    Not a Kopf index: Kopf holds every handler until an index has seen all objects, while the
    objects waiting for that hold the worker slots, so more objects at start than
    ``--max-workers`` stopped the operator for good.
    """
    owners: dict[str, set[str]] = {}
    for alias in aliases or ():
        try:
            owners[alias] = {service.resolve(namespace, str(alias)).name}
        except KmsError:
            owners[alias] = set()
    return owners


def admission_problem(
    operation: str,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    alias_owners: Mapping[str, set[str]],
    *,
    namespace_terminating: bool = False,
) -> str | None:
    """Why a request must be refused, or None. A pure function: the webhook only wraps it.

    Only what a request *changes* is judged, so the operator's own writes (finalizers,
    recreating an object after a cancelled deletion) always pass. In a namespace being deleted
    (``namespace_terminating``), a default key's deletion passes: the key goes with the
    namespace, which could not finish otherwise.
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
        if was_default and not namespace_terminating:
            return "default keys cannot be deleted (only with their namespace)"
        return None
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
        runtime: Runtime = kwargs["memo"].runtime
        body = new if new is not None else old
        aliases = (body or {}).get("spec", {}).get("aliases") or ()
        owners = alias_owners(runtime.service, namespace, aliases)
        operation = kwargs.get("operation") or ""
        terminating = False
        labels = ((old or {}).get("metadata") or {}).get("labels") or {}
        if operation == "DELETE" and labels.get(DEFAULT_LABEL) == "true":
            # Only then is the namespace looked up (a sync handler: Kopf runs it in a thread).
            info = runtime.objects.namespace_info(namespace)
            terminating = info is None or info.terminating
        problem = admission_problem(operation, old, new, owners, namespace_terminating=terminating)
    except Exception:
        # A fault of ours must not block every write (the operator's own included): admit,
        # and let the reconciliation refuse with Events and conditions as without a webhook.
        log.exception("admission check failed; admitting the request")
        return
    if problem is not None:
        raise kopf.AdmissionError(problem, code=422)


ADMISSION_ID = "cmk-admission"
ADMISSION_OPERATIONS: tuple[Literal["CREATE", "UPDATE", "DELETE"], ...] = (
    "CREATE",
    "UPDATE",
    "DELETE",
)


def webhook_entries(client_config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``webhooks`` of the ValidatingWebhookConfiguration for Kopf's server at
    ``client_config`` (its URL and CA): one webhook, for CustomerMasterKeys."""
    config = dict(client_config)
    if config.get("url"):
        config["url"] = f"{str(config['url']).rstrip('/')}/{ADMISSION_ID}"
    if isinstance(config.get("service"), Mapping):
        service = dict(config["service"])
        service["path"] = f"{str(service.get('path') or '').rstrip('/')}/{ADMISSION_ID}"
        config["service"] = service
    return [
        {
            "name": f"{ADMISSION_ID}.{GROUP}",
            "clientConfig": config,
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "apiVersions": [VERSION],
                    "resources": [CMK_PLURAL],
                    "operations": list(ADMISSION_OPERATIONS),
                    "scope": "Namespaced",
                }
            ],
            # When the operator is down, requests pass; Events and conditions still explain.
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "matchPolicy": "Equivalent",
            "timeoutSeconds": 10,
            "admissionReviewVersions": ["v1"],
        }
    ]


def configure_webhooks(objects: Objects, client_config: Mapping[str, Any] | None) -> None:
    """Point the chart's ValidatingWebhookConfiguration at the webhook server (None: remove
    the webhook, on shutdown). The operator may only patch that one configuration."""
    entries = webhook_entries(client_config) if client_config is not None else []
    objects.patch_validating_webhooks(WEBHOOK_CONFIGURATION, entries)


def register_admission() -> None:
    """Add the validating webhook; only with a webhook server (Kopf refuses one without)."""
    kopf.on.validate(
        GROUP,
        VERSION,
        CMK_PLURAL,
        id=ADMISSION_ID,
        registry=registry,
        operations=list(ADMISSION_OPERATIONS),
        # When the operator is down, requests pass; Events and conditions still explain.
        ignore_failures=True,
    )(validate)


# -- drift ---------------------------------------------------------------------------------


def report_keys_without_objects(runtime: Runtime) -> int:
    """At start-up: every live key in the store without its object gets an Event and a log.

    Each namespace holding keys is looked up first: keys of an earlier namespace of that name
    (or of a namespace that no longer exists) are detached, and reported as such.
    """
    service, objects = runtime.service, runtime.objects
    watched = runtime.settings.namespaces
    items = (
        [item for ns in watched for item in objects.list_cmks(ns)]
        if watched
        else objects.list_cmks()
    )
    present = {(item["metadata"]["namespace"], item["metadata"]["name"]) for item in items}
    holding = sorted(
        {
            r.namespace
            for r in service.keys()
            if r.state is not KeyState.DESTROYED
            and not r.is_detached
            and (not watched or r.namespace in watched)
        }
    )
    for namespace in holding:
        try:
            info = objects.namespace_info(namespace)
        except Exception:
            log.exception("could not look namespace %s up; its keys stay as they are", namespace)
            continue
        # A namespace that is gone has no UID: every key bound to one of its UIDs detaches.
        service.observe_namespace(namespace, info.uid if info is not None else "")
    missing = 0
    for record in service.keys():
        if watched and record.namespace not in watched:
            continue
        if record.state is KeyState.DESTROYED:
            continue
        if record.is_detached:
            message = detached_message(record)
        elif (record.namespace, record.name) in present:
            continue
        else:
            message = (
                f"key {record.key_id} ({record.state}) is in the store but its "
                "CustomerMasterKey is gone; to bind it again, create the object with the same "
                f"name and the annotation {KEY_ID_ANNOTATION}={record.key_id}"
            )
        missing += 1
        _report_key_without_object(objects, record, message)
    return missing

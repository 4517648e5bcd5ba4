"""CreateKey, CreateAlias/UpdateAlias/DeleteAlias, EnableKey/DisableKey,
EnableKeyRotation/DisableKeyRotation, RotateKeyOnDemand, ScheduleKeyDeletion/CancelKeyDeletion.

Each does to the CustomerMasterKey what a ``kubectl`` user would do, and needs of the caller
the RBAC verb that user needs on ``customermasterkeys`` in the key's namespace, checked before
any write:

============================  ============================================  ================
operation                     write                                         verb
============================  ============================================  ================
CreateKey                     create the object                             create
Create/Update/DeleteAlias     ``spec.aliases`` of each object it touches    patch (each)
EnableKey, DisableKey         ``spec.enabled``                              patch
Enable/DisableKeyRotation     ``spec.rotation.periodDays``                  patch
RotateKeyOnDemand             annotation ``kms.cmk.dev/rotate``             patch
ScheduleKeyDeletion           ``spec.pendingWindowDays`` (when it differs,  delete (+ patch)
                              with patch), then delete the object
CancelKeyDeletion             annotation ``kms.cmk.dev/cancel-deletion``    patch
============================  ============================================  ================

The request is checked against the domain's rules first (a default key cannot be disabled, an
alias is unique in its namespace, ...), so a refusal comes back as AWS's exception rather than
as a condition on the object. Then the operator (same process) applies the change to the key
and the operation waits for it, so the answer, like the next DescribeKey, shows the change.
Spec patches carry the ``resourceVersion`` they were computed from: a change made meanwhile by
someone else is read again, never overwritten.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from kms_operator.contract import (
    API_VERSION,
    CANCEL_DELETION_ANNOTATION,
    CMK_KIND,
    NAME_TAG,
    NAMESPACE_TAG,
    ROTATE_ANNOTATION,
)
from kms_operator.errors import (
    AliasConflict,
    AlreadyExists,
    DefaultKeyProtected,
    InvalidRequest,
    KeyStateError,
    NotFound,
)
from kms_operator.keys.rules import (
    ALIAS_PREFIX,
    DEFAULT_ALIAS_PREFIX,
    DEFAULT_PENDING_WINDOW_DAYS,
    PENDING_WINDOW_DAYS,
    ROTATION_PERIOD_DAYS,
    refuse_state,
    validate_alias,
)
from kms_operator.keys.service import KeyService
from kms_operator.store.records import KeyRecord, KeySpec, KeyState, KeyUsage, Origin

from .calls import AwsCall, Members
from .identifiers import KeyName
from .key_operations import key_metadata
from .resources import Body, KeyObjects, LifecycleOperation
from .wire import AwsError, UnsupportedOperation, epoch

VERB_CREATE = "create"
VERB_PATCH = "patch"
VERB_DELETE = "delete"

#: AWS's default period of automatic rotation.
DEFAULT_ROTATION_PERIOD_DAYS = 365
#: Attempts at a free generated name (``key-<8 hex>``) before giving up.
NAME_ATTEMPTS = 3
MAX_TAGS = 50
MAX_DESCRIPTION_CHARS = 8192
#: Aliases the CustomerMasterKey schema forbids (AWS's own keys).
AWS_ALIAS_PREFIX = "alias/aws/"

_ORIGINS = {"AWS_KMS": Origin.KMS, "EXTERNAL": Origin.EXTERNAL}
_OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class InvalidTag(AwsError):
    shape = "TagException"


class InvalidAliasName(AwsError):
    shape = "InvalidAliasNameException"


# -- shared steps -------------------------------------------------------------------------------


def _only(aws: AwsCall, member: str, supported: tuple[str, ...]) -> str | None:
    """The member's value when it is one of ``supported``; AWS's other values are not served."""
    value = aws.fields.string(member)
    if value is not None and value not in supported:
        raise UnsupportedOperation(
            f"{member} {value!r} is not supported here; supported: {', '.join(supported)}"
        )
    return value


def _refuse_pending_deletion(record: KeyRecord, operation: str) -> None:
    if record.state is KeyState.PENDING_DELETION:
        raise refuse_state(record, operation)


def _refuse_default(record: KeyRecord, what: str) -> None:
    if record.is_default:
        raise DefaultKeyProtected(
            f"key {record.namespace}/{record.name} is a default key and cannot be {what}"
        )


def _refuse_external(record: KeyRecord, what: str) -> None:
    if record.origin is Origin.EXTERNAL:
        raise UnsupportedOperation(
            f"key {record.key_id} has imported key material (origin EXTERNAL): it has no "
            f"{what}; it rotates only by importing new material"
        )


def _holds(body: Body, record: KeyRecord) -> bool:
    """Whether the object at the key's name is the key's: the one it is bound to, or one that
    claims it by ``status.keyId`` (as the operator reads a claim): the object the operator
    creates again after a cancelled deletion claims its key that way before the store binds
    it to the new UID."""
    if record.object_uid is None or body["metadata"].get("uid") == record.object_uid:
        return True
    return (body.get("status") or {}).get("keyId") == str(record.key_id)


async def _object_of(objects: KeyObjects, record: KeyRecord) -> Body:
    """The CustomerMasterKey that holds ``record`` now."""
    body = await objects.run(objects.resources.get_cmk, record.namespace, record.name)
    if body is None or not _holds(body, record):
        raise KeyStateError(
            f"key {record.key_id} is not held by a CustomerMasterKey {record.namespace}/"
            f"{record.name} right now (its object is being created again); retry"
        )
    return body


async def _patch(
    objects: KeyObjects, record: KeyRecord, change: Callable[[Body], Body | None]
) -> None:
    """Patch the key's live object with ``change(object)`` (None: nothing to change), under
    the resourceVersion it was computed from; read again when someone changed it meanwhile."""

    async def attempt() -> None:
        body = await _object_of(objects, record)
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            raise KeyStateError(
                f"CustomerMasterKey {record.namespace}/{record.name} is being deleted; retry"
            )
        patch = change(body)
        if patch is None:
            return
        patch.setdefault("metadata", {})["resourceVersion"] = meta["resourceVersion"]
        await objects.run(objects.resources.patch_cmk, record.namespace, record.name, patch)

    await objects.change(attempt)


def _spec(body: Body) -> dict[str, Any]:
    return dict(body.get("spec") or {})


async def _key_becomes(
    aws: AwsCall,
    objects: KeyObjects,
    record: KeyRecord,
    done: Callable[[KeyRecord], bool],
    what: str,
) -> KeyRecord:
    """The key once ``done`` holds for it in the key service."""
    service = aws.call.service

    async def probe() -> KeyRecord | None:
        current = service.get(record.key_id)
        return current if done(current) else None

    return await objects.until(probe, f"{what} key {record.key_id}")


# -- CreateKey ---------------------------------------------------------------------------------


def _tags(aws: AwsCall) -> dict[str, str]:
    """The tags this KMS understands (the object's name and namespace); no others are kept."""
    understood: dict[str, str] = {}
    for tag in aws.fields.objects("Tags", max_items=MAX_TAGS):
        key, value = tag.get("TagKey"), tag.get("TagValue")
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidTag("each tag needs a TagKey and a TagValue (strings)")
        if key not in (NAME_TAG, NAMESPACE_TAG):
            raise InvalidTag(
                f"tag {key[:128]!r} is not kept here (there is no TagResource either); the "
                f"tags understood are {NAME_TAG} and {NAMESPACE_TAG}"
            )
        if key in understood:
            raise InvalidTag(f"tag {key} is given twice")
        understood[key] = value
    name = understood.get(NAME_TAG)
    if name is not None and not (len(name) <= 253 and _OBJECT_NAME.fullmatch(name)):
        raise InvalidTag(f"tag {NAME_TAG} must be a Kubernetes object name (a DNS subdomain)")
    namespace = understood.get(NAMESPACE_TAG)
    if namespace is not None and not _NAMESPACE.fullmatch(namespace):
        raise InvalidTag(f"tag {NAMESPACE_TAG} must be a namespace name (a DNS label)")
    return understood


def _new_key_spec(aws: AwsCall) -> dict[str, Any]:
    """The CustomerMasterKey spec CreateKey's members ask for."""
    fields = aws.fields
    if fields.boolean("MultiRegion"):
        raise UnsupportedOperation("multi-Region keys are not supported here")
    for member in ("CustomKeyStoreId", "XksKeyId"):
        if fields.string(member) is not None:
            raise UnsupportedOperation(f"{member}: custom key stores are not supported here")
    if fields.string("Policy", max_chars=32768) is not None:
        raise UnsupportedOperation(
            "key policies are not supported here: who may use a key is Kubernetes RBAC on its "
            "CustomerMasterKey (Roles and RoleBindings)"
        )
    _only(aws, "KeyUsage", (KeyUsage.ENCRYPT_DECRYPT.value,))
    for member in ("KeySpec", "CustomerMasterKeySpec"):
        _only(aws, member, (KeySpec.SYMMETRIC_DEFAULT.value,))
    origin = _only(aws, "Origin", tuple(_ORIGINS)) or "AWS_KMS"
    spec: dict[str, Any] = {
        "origin": _ORIGINS[origin].value,
        "keySpec": KeySpec.SYMMETRIC_DEFAULT.value,
        "keyUsage": KeyUsage.ENCRYPT_DECRYPT.value,
    }
    description = fields.string("Description", max_chars=MAX_DESCRIPTION_CHARS)
    if description:
        spec["description"] = description
    return spec


async def _create_object(
    aws: AwsCall, objects: KeyObjects, namespace: str, chosen: str | None, spec: dict[str, Any]
) -> Body:
    """Create the CustomerMasterKey named ``chosen``, else under a free generated name."""
    attempts_left = 1 if chosen is not None else NAME_ATTEMPTS
    while True:
        name = chosen or f"key-{secrets.token_hex(4)}"
        aws.call.audit.key_name = name
        body = {
            "apiVersion": API_VERSION,
            "kind": CMK_KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        try:
            return await objects.run(objects.resources.create_cmk, namespace, body)
        except AlreadyExists:
            attempts_left -= 1
            if not attempts_left:
                raise


async def create_key(aws: AwsCall, objects: KeyObjects) -> Members:
    spec = _new_key_spec(aws)
    tags = _tags(aws)
    namespace = tags.get(NAMESPACE_TAG) or aws.caller_namespace()
    chosen = tags.get(NAME_TAG)
    aws.call.audit.namespace, aws.call.audit.key_name = namespace, chosen
    await aws.call.state.authorizer.authorize(aws.user, VERB_CREATE, namespace, None)
    created = await _create_object(aws, objects, namespace, chosen, spec)
    name, uid = created["metadata"]["name"], created["metadata"]["uid"]
    service = aws.call.service

    async def probe() -> KeyRecord | None:
        record = service.find(namespace, name)
        return record if record is not None and record.object_uid == uid else None

    record = await objects.until(probe, f"create the key of CustomerMasterKey {namespace}/{name}")
    aws.call.note_key(record)
    return {"KeyMetadata": key_metadata(aws, record)}


# -- aliases -----------------------------------------------------------------------------------


def _alias_name(aws: AwsCall, namespace: str | None) -> KeyName:
    """``AliasName`` (``alias/…``, or an alias ARN), in ``namespace`` (the target key's) when
    given, else in its ARN's or the caller's namespace."""
    text = aws.fields.required_string("AliasName", max_chars=2048)
    if text.startswith("arn:"):
        name = aws.arns.parse(text, aws.user, member="AliasName")
        if namespace is not None and name.namespace != namespace:
            raise InvalidRequest(
                "the AliasName ARN's region (its namespace) is not the target key's namespace",
                field="AliasName",
            )
    else:
        name = KeyName(namespace or aws.caller_namespace(), text)
    if not name.reference.startswith(ALIAS_PREFIX):
        raise InvalidAliasName("AliasName must look like alias/<name>")
    return name


def _check_new_alias(alias: str, target: KeyRecord) -> None:
    """The rules the domain applies to an alias a key takes (its spelling is AWS's
    InvalidAliasNameException; the domain's reserved ``alias/kms/…`` its own refusal)."""
    try:
        validate_alias(alias)
    except InvalidRequest as exc:
        raise InvalidAliasName(exc.message) from None
    if alias.startswith(AWS_ALIAS_PREFIX):
        raise InvalidAliasName(f"alias {alias!r} is reserved: {AWS_ALIAS_PREFIX}… names AWS's keys")
    if alias.startswith(DEFAULT_ALIAS_PREFIX) and not target.is_default:
        raise InvalidRequest(
            f"alias {alias!r} is reserved: {DEFAULT_ALIAS_PREFIX}… names default keys",
            field="aliases",
        )


def _owner(service: KeyService, namespace: str, alias: str) -> KeyRecord | None:
    try:
        return service.resolve(namespace, alias)
    except NotFound:
        return None


def _aliases_patch(body: Body, wanted: Callable[[set[str]], set[str]]) -> Body | None:
    aliases = set(_spec(body).get("aliases") or ())
    changed = wanted(set(aliases))
    return None if changed == aliases else {"spec": {"aliases": sorted(changed)}}


async def _add_alias(aws: AwsCall, objects: KeyObjects, record: KeyRecord, alias: str) -> None:
    await _patch(objects, record, lambda body: _aliases_patch(body, lambda a: a | {alias}))
    service = aws.call.service

    async def probe() -> KeyRecord | None:
        owner = _owner(service, record.namespace, alias)
        return owner if owner is not None and owner.key_id == record.key_id else None

    await objects.until(probe, f"give alias {alias} to key {record.key_id}")


async def _remove_alias(aws: AwsCall, objects: KeyObjects, record: KeyRecord, alias: str) -> None:
    await _patch(objects, record, lambda body: _aliases_patch(body, lambda a: a - {alias}))
    service = aws.call.service

    async def probe() -> bool | None:
        owner = _owner(service, record.namespace, alias)
        return True if owner is None or owner.key_id != record.key_id else None

    await objects.until(probe, f"take alias {alias} from key {record.key_id}")


def _refuse_losing(record: KeyRecord, alias: str) -> None:
    if record.is_default and alias.startswith(DEFAULT_ALIAS_PREFIX):
        raise DefaultKeyProtected(
            f"key {record.namespace}/{record.name} is a default key: its "
            f"{DEFAULT_ALIAS_PREFIX}… alias cannot be removed"
        )


async def create_alias(aws: AwsCall, objects: KeyObjects) -> Members:
    target = await aws.key(VERB_PATCH, "TargetKeyId")
    alias = _alias_name(aws, target.namespace).reference
    _check_new_alias(alias, target)
    _refuse_pending_deletion(target, "CreateAlias")
    if _owner(aws.call.service, target.namespace, alias) is not None:
        raise AliasConflict(f"alias {alias!r} exists already in namespace {target.namespace!r}")
    await _add_alias(aws, objects, target, alias)
    return {}


async def update_alias(aws: AwsCall, objects: KeyObjects) -> Members:
    namespace = aws.name_of("TargetKeyId").namespace
    alias = _alias_name(aws, namespace)
    owner = await aws.call.resolve(VERB_PATCH, alias.namespace, alias.reference)
    aws.call.note_source(owner, owner.current_version)
    target = await aws.key(VERB_PATCH, "TargetKeyId")
    if owner.key_id == target.key_id:
        return {}
    _check_new_alias(alias.reference, target)
    _refuse_losing(owner, alias.reference)
    _refuse_pending_deletion(owner, "UpdateAlias")
    _refuse_pending_deletion(target, "UpdateAlias")
    # One alias names one key: the old key lets it go before the new one takes it.
    await _remove_alias(aws, objects, owner, alias.reference)
    await _add_alias(aws, objects, target, alias.reference)
    return {}


async def delete_alias(aws: AwsCall, objects: KeyObjects) -> Members:
    alias = _alias_name(aws, None)
    owner = await aws.call.resolve(VERB_PATCH, alias.namespace, alias.reference)
    _refuse_losing(owner, alias.reference)
    _refuse_pending_deletion(owner, "DeleteAlias")
    await _remove_alias(aws, objects, owner, alias.reference)
    return {}


# -- enabling and rotation ---------------------------------------------------------------------


async def _set_enabled(aws: AwsCall, objects: KeyObjects, enabled: bool) -> Members:
    record = await aws.key(VERB_PATCH)
    if not enabled:
        _refuse_default(record, "disabled")
    _refuse_pending_deletion(record, "EnableKey" if enabled else "DisableKey")

    def change(body: Body) -> Body | None:
        if _spec(body).get("enabled", True) == enabled:
            return None
        return {"spec": {"enabled": enabled}}

    await _patch(objects, record, change)
    await _key_becomes(
        aws, objects, record, lambda r: r.enabled == enabled, "enable" if enabled else "disable"
    )
    return {}


async def enable_key(aws: AwsCall, objects: KeyObjects) -> Members:
    return await _set_enabled(aws, objects, True)


async def disable_key(aws: AwsCall, objects: KeyObjects) -> Members:
    return await _set_enabled(aws, objects, False)


async def _set_rotation(aws: AwsCall, objects: KeyObjects, days: int | None) -> Members:
    record = await aws.key(VERB_PATCH)
    _refuse_external(record, "automatic rotation")
    _refuse_pending_deletion(record, "EnableKeyRotation" if days else "DisableKeyRotation")

    def change(body: Body) -> Body | None:
        current = (_spec(body).get("rotation") or {}).get("periodDays")
        if current == days:
            return None
        return {"spec": {"rotation": None if days is None else {"periodDays": days}}}

    await _patch(objects, record, change)
    await _key_becomes(
        aws,
        objects,
        record,
        lambda r: r.rotation_period_days == days,
        "turn on rotation of" if days else "turn off rotation of",
    )
    return {}


async def enable_key_rotation(aws: AwsCall, objects: KeyObjects) -> Members:
    days = aws.fields.integer("RotationPeriodInDays", *ROTATION_PERIOD_DAYS)
    return await _set_rotation(aws, objects, days or DEFAULT_ROTATION_PERIOD_DAYS)


async def disable_key_rotation(aws: AwsCall, objects: KeyObjects) -> Members:
    return await _set_rotation(aws, objects, None)


async def rotate_key_on_demand(aws: AwsCall, objects: KeyObjects) -> Members:
    record = await aws.key(VERB_PATCH)
    _refuse_external(record, "rotation on demand")
    _refuse_default(record, "rotated on demand")
    if record.state is not KeyState.ENABLED:
        raise refuse_state(record, "RotateKeyOnDemand")
    before = record.current_version
    # A new value of the annotation is the request (as kmsctl rotate sets it).
    request = {"metadata": {"annotations": {ROTATE_ANNOTATION: str(time.time_ns())}}}
    await _patch(objects, record, lambda body: request)
    await _key_becomes(aws, objects, record, lambda r: r.current_version > before, "rotate")
    return {"KeyId": aws.arns.key(record)}


# -- deletion ----------------------------------------------------------------------------------


async def schedule_key_deletion(aws: AwsCall, objects: KeyObjects) -> Members:
    window = aws.fields.integer("PendingWindowInDays", *PENDING_WINDOW_DAYS)
    days = window or DEFAULT_PENDING_WINDOW_DAYS
    record = await aws.key(VERB_DELETE)
    _refuse_default(record, "deleted")
    _refuse_pending_deletion(record, "ScheduleKeyDeletion")

    async def attempt() -> Body:
        body = await _object_of(objects, record)
        current = _spec(body).get("pendingWindowDays") or DEFAULT_PENDING_WINDOW_DAYS
        if current == days or body["metadata"].get("deletionTimestamp"):
            return body
        # The window is the object's: changing it is a patch, which the caller needs too.
        await aws.call.authorize(VERB_PATCH, record)
        patch = {
            "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
            "spec": {"pendingWindowDays": days},
        }
        return await objects.run(objects.resources.patch_cmk, record.namespace, record.name, patch)

    body = await objects.change(attempt)
    if not body["metadata"].get("deletionTimestamp"):
        uid = str(body["metadata"]["uid"])
        await objects.run(objects.resources.delete_cmk, record.namespace, record.name, uid)
    scheduled = await _key_becomes(
        aws,
        objects,
        record,
        lambda r: r.state is KeyState.PENDING_DELETION,
        "schedule the deletion of",
    )
    return {
        "KeyId": aws.arns.key(scheduled),
        "DeletionDate": epoch(scheduled.deletion_date),
        "KeyState": KeyState.PENDING_DELETION.value,
        "PendingWindowInDays": days,
    }


async def cancel_key_deletion(aws: AwsCall, objects: KeyObjects) -> Members:
    record = await aws.key(VERB_PATCH)
    if record.state is not KeyState.PENDING_DELETION:
        raise KeyStateError(
            f"key {record.key_id} is {record.state}, not PendingDeletion: there is no "
            "deletion to cancel"
        )

    def change(body: Body) -> Body | None:
        annotations = body["metadata"].get("annotations") or {}
        if annotations.get(CANCEL_DELETION_ANNOTATION) == "true":
            return None
        return {"metadata": {"annotations": {CANCEL_DELETION_ANNOTATION: "true"}}}

    async def attempt() -> str:
        body = await _object_of(objects, record)
        patch = change(body)
        if patch is not None:
            patch["metadata"]["resourceVersion"] = body["metadata"]["resourceVersion"]
            await objects.run(objects.resources.patch_cmk, record.namespace, record.name, patch)
        return str(body["metadata"]["uid"])

    cancelled = await objects.change(attempt)
    service = aws.call.service

    async def probe() -> KeyRecord | None:
        # Kept in the store, and claimed by the object the operator creates anew.
        current = service.get(record.key_id)
        if current.state is KeyState.PENDING_DELETION:
            return None
        body = await objects.run(objects.resources.get_cmk, record.namespace, record.name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        fresh = body["metadata"].get("uid") != cancelled
        return current if fresh and _holds(body, current) else None

    kept = await objects.until(
        probe, f"cancel the deletion of key {record.key_id}", reads_objects=True
    )
    return {"KeyId": aws.arns.key(kept)}


OPERATIONS: dict[str, LifecycleOperation] = {
    "CreateKey": create_key,
    "CreateAlias": create_alias,
    "UpdateAlias": update_alias,
    "DeleteAlias": delete_alias,
    "EnableKey": enable_key,
    "DisableKey": disable_key,
    "EnableKeyRotation": enable_key_rotation,
    "DisableKeyRotation": disable_key_rotation,
    "RotateKeyOnDemand": rotate_key_on_demand,
    "ScheduleKeyDeletion": schedule_key_deletion,
    "CancelKeyDeletion": cancel_key_deletion,
}

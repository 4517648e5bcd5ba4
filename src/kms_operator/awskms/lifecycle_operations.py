"""CreateKey, EnableKey/DisableKey, EnableKeyRotation/DisableKeyRotation, RotateKeyOnDemand,
ScheduleKeyDeletion/CancelKeyDeletion (the alias operations are :mod:`.alias_operations`).

Each does to the CustomerMasterKey what a ``kubectl`` user would do, and needs of the caller
the RBAC verb that user needs on ``customermasterkeys`` in the key's namespace, checked before
any write:

============================  ============================================  ================
operation                     write                                         verb
============================  ============================================  ================
CreateKey                     create the object                             create
EnableKey, DisableKey         ``spec.enabled``                              patch
Enable/DisableKeyRotation     ``spec.rotation.periodDays``                  patch
RotateKeyOnDemand             annotation ``kms.cmk.dev/rotate``             patch
ScheduleKeyDeletion           ``spec.pendingWindowDays`` (when it differs,  delete (+ patch)
                              with patch), then delete the object
CancelKeyDeletion             annotation ``kms.cmk.dev/cancel-deletion``    patch
============================  ============================================  ================

The request is checked against the domain's rules first (a default key cannot be disabled, a key
pending deletion takes no change, ...), so a refusal comes back as AWS's exception rather than
as a condition on the object. Then the operator (same process) applies the change to the key
and the operation waits for it, so the answer, like the next DescribeKey, shows the change.
Spec patches carry the ``resourceVersion`` they were computed from: a change made meanwhile by
someone else is read again, never overwritten.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from kms_operator.contract import (
    API_VERSION,
    CANCEL_DELETION_ANNOTATION,
    CMK_KIND,
    NAME_TAG,
    NAMESPACE_TAG,
    ROTATE_ANNOTATION,
    VERB_CREATE,
    VERB_DELETE,
    VERB_PATCH,
)
from kms_operator.errors import (
    AlreadyExists,
    KeyStateError,
)
from kms_operator.keys.rules import (
    DEFAULT_PENDING_WINDOW_DAYS,
    PENDING_WINDOW_DAYS,
    ROTATION_PERIOD_DAYS,
    refuse_state,
)
from kms_operator.store.records import KeyRecord, KeySpec, KeyState, KeyUsage, Origin

from .calls import AwsCall, Members
from .cmk_objects import (
    holds,
    key_becomes,
    object_of,
    only_supported,
    patch_object,
    refuse_default,
    refuse_external,
    refuse_pending_deletion,
    spec_of,
)
from .key_operations import key_metadata
from .resources import Body, KeyObjects, LifecycleOperation
from .wire import AwsError, UnsupportedOperation, epoch

#: AWS's default period of automatic rotation.
DEFAULT_ROTATION_PERIOD_DAYS = 365
#: Attempts at a free generated name (``key-<8 hex>``) before giving up.
NAME_ATTEMPTS = 3
MAX_TAGS = 50
MAX_DESCRIPTION_CHARS = 8192

_ORIGINS = {"AWS_KMS": Origin.KMS, "EXTERNAL": Origin.EXTERNAL}
_OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class InvalidTag(AwsError):
    shape = "TagException"


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
    only_supported(aws, "KeyUsage", (KeyUsage.ENCRYPT_DECRYPT.value,))
    for member in ("KeySpec", "CustomerMasterKeySpec"):
        only_supported(aws, member, (KeySpec.SYMMETRIC_DEFAULT.value,))
    origin = only_supported(aws, "Origin", tuple(_ORIGINS)) or "AWS_KMS"
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


# -- enabling and rotation ---------------------------------------------------------------------


async def _set_enabled(aws: AwsCall, objects: KeyObjects, enabled: bool) -> Members:
    record = await aws.key(VERB_PATCH)
    if not enabled:
        refuse_default(record, "disabled")
    refuse_pending_deletion(record, "EnableKey" if enabled else "DisableKey")

    def change(body: Body) -> Body | None:
        if spec_of(body).get("enabled", True) == enabled:
            return None
        return {"spec": {"enabled": enabled}}

    await patch_object(objects, record, change)
    await key_becomes(
        aws, objects, record, lambda r: r.enabled == enabled, "enable" if enabled else "disable"
    )
    return {}


async def enable_key(aws: AwsCall, objects: KeyObjects) -> Members:
    return await _set_enabled(aws, objects, True)


async def disable_key(aws: AwsCall, objects: KeyObjects) -> Members:
    return await _set_enabled(aws, objects, False)


async def _set_rotation(aws: AwsCall, objects: KeyObjects, days: int | None) -> Members:
    record = await aws.key(VERB_PATCH)
    refuse_external(record, "automatic rotation")
    refuse_pending_deletion(record, "EnableKeyRotation" if days else "DisableKeyRotation")

    def change(body: Body) -> Body | None:
        current = (spec_of(body).get("rotation") or {}).get("periodDays")
        if current == days:
            return None
        return {"spec": {"rotation": None if days is None else {"periodDays": days}}}

    await patch_object(objects, record, change)
    await key_becomes(
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
    refuse_external(record, "rotation on demand")
    refuse_default(record, "rotated on demand")
    if record.state is not KeyState.ENABLED:
        raise refuse_state(record, "RotateKeyOnDemand")
    before = record.current_version
    # A new value of the annotation is the request (as kmsctl rotate sets it).
    request = {"metadata": {"annotations": {ROTATE_ANNOTATION: str(time.time_ns())}}}
    await patch_object(objects, record, lambda body: request)
    await key_becomes(aws, objects, record, lambda r: r.current_version > before, "rotate")
    return {"KeyId": aws.arns.key(record)}


# -- deletion ----------------------------------------------------------------------------------


async def schedule_key_deletion(aws: AwsCall, objects: KeyObjects) -> Members:
    window = aws.fields.integer("PendingWindowInDays", *PENDING_WINDOW_DAYS)
    days = window or DEFAULT_PENDING_WINDOW_DAYS
    record = await aws.key(VERB_DELETE)
    refuse_default(record, "deleted")
    refuse_pending_deletion(record, "ScheduleKeyDeletion")

    async def attempt() -> Body:
        body = await object_of(objects, record)
        current = spec_of(body).get("pendingWindowDays") or DEFAULT_PENDING_WINDOW_DAYS
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
    scheduled = await key_becomes(
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
        body = await object_of(objects, record)
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
        return current if fresh and holds(body, current) else None

    kept = await objects.until(
        probe, f"cancel the deletion of key {record.key_id}", reads_objects=True
    )
    return {"KeyId": aws.arns.key(kept)}


OPERATIONS: dict[str, LifecycleOperation] = {
    "CreateKey": create_key,
    "EnableKey": enable_key,
    "DisableKey": disable_key,
    "EnableKeyRotation": enable_key_rotation,
    "DisableKeyRotation": disable_key_rotation,
    "RotateKeyOnDemand": rotate_key_on_demand,
    "ScheduleKeyDeletion": schedule_key_deletion,
    "CancelKeyDeletion": cancel_key_deletion,
}

"""What the lifecycle and alias operations do the same way to a key's CustomerMasterKey: find
the object that holds the key, patch it under the resourceVersion the patch was computed from,
wait until the operator has applied a change to the key, and the domain's refusals checked
before any write (so they come back as AWS's exceptions, not as a condition on the object).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kms_operator.errors import (
    DefaultKeyProtected,
    KeyStateError,
)
from kms_operator.keys.rules import (
    refuse_state,
)
from kms_operator.store.records import KeyRecord, KeyState, Origin

from .calls import AwsCall
from .resources import Body, KeyObjects
from .wire import UnsupportedOperation


def only_supported(aws: AwsCall, member: str, supported: tuple[str, ...]) -> str | None:
    """The member's value when it is one of ``supported``; AWS's other values are not served."""
    value = aws.fields.string(member)
    if value is not None and value not in supported:
        raise UnsupportedOperation(
            f"{member} {value!r} is not supported here; supported: {', '.join(supported)}"
        )
    return value


def refuse_pending_deletion(record: KeyRecord, operation: str) -> None:
    if record.state is KeyState.PENDING_DELETION:
        raise refuse_state(record, operation)


def refuse_default(record: KeyRecord, what: str) -> None:
    if record.is_default:
        raise DefaultKeyProtected(
            f"key {record.namespace}/{record.name} is a default key and cannot be {what}"
        )


def refuse_external(record: KeyRecord, what: str) -> None:
    if record.origin is Origin.EXTERNAL:
        raise UnsupportedOperation(
            f"key {record.key_id} has imported key material (origin EXTERNAL): it has no "
            f"{what}; it rotates only by importing new material"
        )


def holds(body: Body, record: KeyRecord) -> bool:
    """Whether the object at the key's name is the key's: the one it is bound to, or one that
    claims it by ``status.keyId`` (as the operator reads a claim): the object the operator
    creates again after a cancelled deletion claims its key that way before the store binds
    it to the new UID."""
    if record.object_uid is None or body["metadata"].get("uid") == record.object_uid:
        return True
    return (body.get("status") or {}).get("keyId") == str(record.key_id)


async def object_of(objects: KeyObjects, record: KeyRecord) -> Body:
    """The CustomerMasterKey that holds ``record`` now."""
    body = await objects.run(objects.resources.get_cmk, record.namespace, record.name)
    if body is None or not holds(body, record):
        raise KeyStateError(
            f"key {record.key_id} is not held by a CustomerMasterKey {record.namespace}/"
            f"{record.name} right now (its object is being created again); retry"
        )
    return body


async def patch_object(
    objects: KeyObjects, record: KeyRecord, change: Callable[[Body], Body | None]
) -> None:
    """Patch the key's live object with ``change(object)`` (None: nothing to change), under
    the resourceVersion it was computed from; read again when someone changed it meanwhile."""

    async def attempt() -> None:
        body = await object_of(objects, record)
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


def spec_of(body: Body) -> dict[str, Any]:
    return dict(body.get("spec") or {})


async def key_becomes(
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

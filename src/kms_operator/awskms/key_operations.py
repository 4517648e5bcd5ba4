"""DescribeKey, ListKeys, ListAliases, GetKeyRotationStatus: what ``kubectl get cmk`` shows.

Reading one key needs the RBAC verb ``get`` on its CMK, listing needs ``list`` on the CMKs of
the namespace: the verbs that let ``kubectl get`` show the same facts from the custom
resources. Lists are sorted (keys by id, aliases by name) and paged with AWS's ``Limit`` and
``Marker``; the marker is the last item's id or name, so a page never repeats or skips an item
that existed through the listing.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from typing import TypeVar

from kms_operator.contract import VERB_GET, VERB_LIST
from kms_operator.keys.rules import KEY_ID_PATTERN
from kms_operator.store.records import KeyRecord, KeyState, Origin, VersionState

from .calls import AwsCall, Members, Operation
from .wire import InvalidMarker, epoch

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

#: Our states by AWS's names; ``Creating`` is the one a key shows before its material exists.
_KEY_STATES = {
    KeyState.CREATING: "Creating",
    KeyState.ENABLED: "Enabled",
    KeyState.DISABLED: "Disabled",
    KeyState.PENDING_IMPORT: "PendingImport",
    KeyState.PENDING_DELETION: "PendingDeletion",
    KeyState.DESTROYED: "Unavailable",
}
_ORIGINS = {Origin.KMS: "AWS_KMS", Origin.EXTERNAL: "EXTERNAL"}

T = TypeVar("T")


def key_metadata(aws: AwsCall, record: KeyRecord) -> Members:
    """AWS's ``KeyMetadata``, with the members that have a meaning here.

    Default keys (DESIGN.md: made by the operator, cannot be disabled, deleted or rotated on
    demand) are what AWS calls AWS-managed keys: ``KeyManager`` ``AWS``; the others are
    ``CUSTOMER``.
    """
    metadata: Members = {
        "AWSAccountId": aws.arns.account,
        "KeyId": str(record.key_id),
        "Arn": aws.arns.key(record),
        "CreationDate": epoch(record.created_at),
        "Enabled": record.state is KeyState.ENABLED,
        "Description": record.description,
        "KeyUsage": record.key_usage.value,
        "KeyState": _KEY_STATES[record.state],
        "Origin": _ORIGINS[record.origin],
        "KeyManager": "AWS" if record.is_default else "CUSTOMER",
        "CustomerMasterKeySpec": record.key_spec.value,
        "KeySpec": record.key_spec.value,
        "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
        "MultiRegion": False,
    }
    if record.deletion_date is not None:
        metadata["DeletionDate"] = epoch(record.deletion_date)
    if record.origin is Origin.EXTERNAL:
        current = next((v for v in record.versions if v.version == record.current_version), None)
        expires = current.expires_at if current is not None else None
        metadata["ExpirationModel"] = (
            "KEY_MATERIAL_EXPIRES" if expires is not None else "KEY_MATERIAL_DOES_NOT_EXPIRE"
        )
        if current is not None and expires is not None and current.state is VersionState.ENABLED:
            metadata["ValidTo"] = epoch(expires)
    return metadata


def _page(
    aws: AwsCall, items: Sequence[T], names: Sequence[str], marker_shape: str
) -> tuple[Sequence[T], Members]:
    """One page of ``items`` (sorted by ``names``), after the caller's ``Marker``."""
    limit = aws.fields.integer("Limit", 1, MAX_LIMIT) or DEFAULT_LIMIT
    marker = aws.fields.string("Marker", max_chars=1024)
    start = 0
    if marker is not None:
        if not re.fullmatch(marker_shape, marker):
            raise InvalidMarker(f"Marker {marker!r} was not given by a previous page")
        # The marker is the last name of the previous page; an item removed since changes
        # nothing, the page starts after where it was.
        start = bisect.bisect_right(names, marker)
    page = items[start : start + limit]
    more: Members = {"Truncated": start + limit < len(items)}
    if more["Truncated"]:
        more["NextMarker"] = names[start + limit - 1]
    return page, more


def _live_keys(aws: AwsCall, namespace: str) -> list[KeyRecord]:
    return sorted(
        (
            record
            for record in aws.call.service.keys()
            if record.namespace == namespace
            and not record.is_detached
            and record.state is not KeyState.DESTROYED
        ),
        key=lambda record: str(record.key_id),
    )


async def _authorize_list(aws: AwsCall, namespace: str) -> None:
    aws.call.audit.namespace = namespace
    await aws.call.state.authorizer.authorize(aws.user, VERB_LIST, namespace, None)


async def describe_key(aws: AwsCall) -> Members:
    record = await aws.key(VERB_GET)
    aws.call.audit.key_version = record.current_version
    return {"KeyMetadata": key_metadata(aws, record)}


async def list_keys(aws: AwsCall) -> Members:
    namespace = aws.caller_namespace()
    await _authorize_list(aws, namespace)
    records = _live_keys(aws, namespace)
    names = [str(record.key_id) for record in records]
    page, more = _page(aws, records, names, KEY_ID_PATTERN.pattern.strip("^$"))
    keys = [{"KeyId": str(r.key_id), "KeyArn": aws.arns.key(r)} for r in page]
    return {"Keys": keys, **more}


def _aliases(aws: AwsCall, records: Iterable[KeyRecord]) -> list[Members]:
    aliases = [
        {
            "AliasName": alias,
            "AliasArn": aws.arns.alias(record.namespace, alias),
            "TargetKeyId": str(record.key_id),
        }
        for record in records
        for alias in record.aliases
    ]
    return sorted(aliases, key=lambda alias: str(alias["AliasName"]))


async def list_aliases(aws: AwsCall) -> Members:
    if aws.fields.string("KeyId") is not None:
        name = aws.name_of()
        namespace = name.namespace
        await _authorize_list(aws, namespace)
        records = [aws.call.service.resolve(namespace, name.reference)]
    else:
        namespace = aws.caller_namespace()
        await _authorize_list(aws, namespace)
        records = _live_keys(aws, namespace)
    aliases = _aliases(aws, records)
    page, more = _page(aws, aliases, [str(a["AliasName"]) for a in aliases], "alias/.+")
    return {"Aliases": list(page), **more}


async def get_key_rotation_status(aws: AwsCall) -> Members:
    record = await aws.key(VERB_GET)
    members: Members = {
        "KeyId": aws.arns.key(record),
        "KeyRotationEnabled": record.rotation_period_days is not None,
    }
    if record.rotation_period_days is not None:
        members["RotationPeriodInDays"] = record.rotation_period_days
    if record.next_rotation_at is not None:
        members["NextRotationDate"] = epoch(record.next_rotation_at)
    return members


OPERATIONS: dict[str, Operation] = {
    "DescribeKey": describe_key,
    "ListKeys": list_keys,
    "ListAliases": list_aliases,
    "GetKeyRotationStatus": get_key_rotation_status,
}

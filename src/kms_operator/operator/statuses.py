"""``CustomerMasterKey.status`` from a key record: pure functions, no cluster needed.

:func:`key_outcome` says what a key record shows (its status fields, Ready from its state,
InStore) as an :class:`~kms_operator.operator.outcomes.Outcome`;
:func:`~kms_operator.operator.outcomes.status_patch` turns it into the status to write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from kms_operator.store.records import KeyRecord, KeyState, Origin
from kms_operator.timestamps import rfc3339, rfc3339_or_none

from . import conditions
from .conditions import Condition
from .outcomes import Notice, Outcome, status_patch

_READY_REASONS = {
    KeyState.ENABLED: conditions.ENABLED,
    KeyState.DISABLED: conditions.DISABLED,
    KeyState.PENDING_IMPORT: conditions.PENDING_IMPORT,
    KeyState.PENDING_DELETION: conditions.PENDING_DELETION,
    KeyState.DESTROYED: conditions.DESTROYED,
    KeyState.CREATING: conditions.CREATED,
}

IN_STORE = Condition(conditions.IN_STORE, True, conditions.FOUND, "the key is in the store")


def ready_condition(record: KeyRecord) -> Condition:
    state = record.state
    if state is KeyState.ENABLED:
        message = f"key {record.key_id} version {record.current_version} is enabled"
    elif state is KeyState.PENDING_DELETION:
        message = f"the key will be destroyed at {rfc3339_or_none(record.deletion_date)}"
    else:
        message = f"the key is {state}: cryptographic operations are refused"
    return Condition(conditions.READY, state is KeyState.ENABLED, _READY_REASONS[state], message)


def key_fields(record: KeyRecord) -> dict[str, Any]:
    """The status fields a key record determines (all but the conditions)."""
    current = record.versions[-1]
    fields: dict[str, Any] = {
        "keyId": str(record.key_id),
        "state": record.state.value,
        "origin": record.origin.value,
        "alias": record.aliases[0] if record.aliases else None,
        "currentVersion": record.current_version,
        "versions": [
            {
                "version": v.version,
                "createdAt": rfc3339(v.created_at),
                "state": v.state.value,
            }
            for v in record.versions
        ],
        "rotation": {
            "lastRotatedAt": rfc3339_or_none(record.last_rotated_at),
            "nextRotationAt": rfc3339_or_none(record.next_rotation_at),
        },
        "deletionDate": rfc3339_or_none(record.deletion_date),
        "default": record.is_default,
    }
    if record.origin is Origin.EXTERNAL:
        fields["material"] = {
            "state": current.state.value,
            "importedAt": rfc3339_or_none(current.imported_at),
            "expiresAt": rfc3339_or_none(current.expires_at),
        }
    return fields


def key_outcome(
    record: KeyRecord,
    extra_conditions: Iterable[Condition] = (),
    notices: Iterable[Notice] = (),
) -> Outcome:
    """What the object of ``record`` shows: its fields, Ready, InStore and ``extra``."""
    return Outcome(
        ready=ready_condition(record),
        fields=key_fields(record),
        extra_conditions=(IN_STORE, *extra_conditions),
        notices=tuple(notices),
    )


def key_status(
    record: KeyRecord,
    *,
    existing_conditions: Iterable[Mapping[str, Any]] | None,
    extra_conditions: Iterable[Condition] = (),
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    """The whole status of ``record``'s object (for writers outside a handler)."""
    return status_patch(
        key_outcome(record, extra_conditions),
        existing_conditions=existing_conditions,
        generation=generation,
        now=now,
    )

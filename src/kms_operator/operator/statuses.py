"""``CustomerMasterKey.status`` from a key record: a pure function, no cluster needed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from kms_operator.store.records import KeyRecord, KeyState, Origin
from kms_operator.timestamps import rfc3339, rfc3339_or_none

from . import conditions
from .conditions import Condition

_READY_REASONS = {
    KeyState.ENABLED: conditions.ENABLED,
    KeyState.DISABLED: conditions.DISABLED,
    KeyState.PENDING_IMPORT: conditions.PENDING_IMPORT,
    KeyState.PENDING_DELETION: conditions.PENDING_DELETION,
    KeyState.DESTROYED: conditions.DESTROYED,
    KeyState.CREATING: conditions.CREATED,
}


def ready_condition(record: KeyRecord) -> Condition:
    state = record.state
    if state is KeyState.ENABLED:
        message = f"key {record.key_id} version {record.current_version} is enabled"
    elif state is KeyState.PENDING_DELETION:
        message = f"the key will be destroyed at {rfc3339_or_none(record.deletion_date)}"
    else:
        message = f"the key is {state}: cryptographic operations are refused"
    return Condition(conditions.READY, state is KeyState.ENABLED, _READY_REASONS[state], message)


def key_status(
    record: KeyRecord,
    *,
    existing_conditions: Iterable[Mapping[str, Any]] | None,
    extra_conditions: Iterable[Condition] = (),
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    current = record.versions[-1]
    status: dict[str, Any] = {
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
        "conditions": merge_conditions_for(
            record, existing_conditions, extra_conditions, generation, now
        ),
    }
    if record.origin is Origin.EXTERNAL:
        status["material"] = {
            "state": current.state.value,
            "importedAt": rfc3339_or_none(current.imported_at),
            "expiresAt": rfc3339_or_none(current.expires_at),
        }
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def merge_conditions_for(
    record: KeyRecord,
    existing: Iterable[Mapping[str, Any]] | None,
    extra: Iterable[Condition],
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    return conditions.merge_conditions(
        existing,
        [
            ready_condition(record),
            Condition(conditions.IN_STORE, True, conditions.FOUND, "the key is in the store"),
            *extra,
        ],
        generation=generation,
        now=now,
    )

"""Status conditions in the Kubernetes convention, built by pure functions.

Reasons are constants reused as Event reasons, so ``kubectl describe`` and ``kubectl get
events`` tell the same story. ``lastTransitionTime`` is kept while a condition's status does
not change, as cert-manager does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kms_operator.timestamps import rfc3339

READY = "Ready"
SYNCED = "Synced"  # the spec was applied to the store as written
IN_STORE = "InStore"  # the key the object is bound to exists in the store

# Reasons (also Event reasons).
CREATED = "Created"
ENABLED = "Enabled"
DISABLED = "Disabled"
PENDING_IMPORT = "PendingImport"
PENDING_DELETION = "PendingDeletion"
DESTROYED = "Destroyed"
APPLIED = "Applied"
ROTATED = "Rotated"
DEFAULT_KEY_PROTECTED = "DefaultKeyProtected"
INVALID_SPEC = "InvalidSpec"
MATERIAL_EXPIRED = "MaterialExpired"
FOUND = "Found"
ERROR = "Error"


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


def merge_conditions(
    existing: Iterable[Mapping[str, Any]] | None,
    wanted: Iterable[Condition],
    *,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The new ``status.conditions``: ``wanted`` replaces same-type entries, others stay."""
    previous = {c.get("type"): c for c in existing or ()}
    merged: dict[str, dict[str, Any]] = {str(k): dict(v) for k, v in previous.items() if k}
    for condition in wanted:
        status = "True" if condition.status else "False"
        before = previous.get(condition.type)
        unchanged = before is not None and before.get("status") == status
        merged[condition.type] = {
            "type": condition.type,
            "status": status,
            "reason": condition.reason,
            "message": condition.message,
            "lastTransitionTime": (
                before["lastTransitionTime"]
                if unchanged and before is not None and before.get("lastTransitionTime")
                else rfc3339(now)
            ),
            **({"observedGeneration": generation} if generation is not None else {}),
        }
    return list(merged.values())


def find_condition(existing: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any]:
    """The condition of ``type_`` in a ``status.conditions`` list; ``{}`` when there is none."""
    return next((c for c in existing or () if c.get("type") == type_), {})

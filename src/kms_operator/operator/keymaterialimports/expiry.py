"""The expiry daemon's step (synchronous: in a thread): show an import Expired at its date.

The dates come from the status (the parameters') and the store (the material's ``validTo``);
the store's own timer deletes expired material, this step only says so on the import.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from typing import Any

from kms_operator.contract import KMI_KIND
from kms_operator.errors import NotFound
from kms_operator.kube.imports import Conflict, Imports
from kms_operator.store.records import VersionState
from kms_operator.timestamps import parse_rfc3339

from .. import conditions
from ..outcomes import ObjectRef, post_notices_now, status_patch
from ..runtime import Runtime
from . import decisions
from .views import ImportStatus

#: Seconds before the object is judged again after a status write (or a write that raced).
CONFLICT_RETRY = 0.5


def expire_if_due(runtime: Runtime, body: Mapping[str, Any]) -> float:
    """Mark the import Expired when its date passed; return seconds until the next check."""
    service = runtime.service
    meta = body["metadata"]
    raw = body.get("status") or {}
    status = ImportStatus.parse(raw)
    present, valid_to = True, None
    if status.key_version is not None and status.key_id is not None:
        try:
            record = service.get(uuid.UUID(status.key_id))
        except (NotFound, ValueError):
            return math.inf
        version = record.version(status.key_version)
        present = version is not None and version.state is VersionState.ENABLED
        if version is not None and version.expires_at is not None:
            valid_to = version.expires_at
        else:
            # The store's timer dropped the material and its date with it.
            try:
                valid_to = parse_rfc3339((body.get("spec") or {}).get("validTo"))
            except ValueError:
                valid_to = None
    now = service.clock.now()
    due = decisions.expiry_due(status, material_present=present, valid_to=valid_to, now=now)
    if due is None:
        wake_at = decisions.next_expiry(status, valid_to)
        return math.inf if wake_at is None else (wake_at - now).total_seconds()
    outcome = decisions.expired(*due)
    try:
        Imports.sharing(runtime.objects).patch_kmi_status(
            meta["namespace"],
            meta["name"],
            status_patch(
                outcome, existing_conditions=raw.get("conditions"), generation=None, now=now
            ),
            resource_version=meta.get("resourceVersion"),
        )
    except Conflict:
        return CONFLICT_RETRY  # changed meanwhile: judge the fresh object
    previous = conditions.find_condition(raw.get("conditions"), conditions.READY)
    post_notices_now(
        runtime.objects, ObjectRef.of(KMI_KIND, body), outcome.notices_to_post(previous)
    )
    return CONFLICT_RETRY

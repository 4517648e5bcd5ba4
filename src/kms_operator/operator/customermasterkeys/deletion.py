"""What to do with a terminating CustomerMasterKey: pure decisions and their reasons.

* the ``kms.cmk.dev/scheduled-deletion`` finalizer holds the object while its key is
  PendingDeletion; the scheduler destroys the key at its date and releases the object. In a
  namespace being deleted, default keys go too (the next namespace of that name starts afresh);
* outside such a namespace, a default key's deletion is refused: the object is created again;
* ``kms.cmk.dev/cancel-deletion=true`` cancels: the key is kept, Disabled, and the object is
  created again from its last spec (:func:`fresh_object`), claiming the same key by id.

:mod:`.deleting` carries these decisions out.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kms_operator.contract import (
    API_VERSION,
    CANCEL_DELETION_ANNOTATION,
    CMK_KIND,
    KEY_ID_ANNOTATION,
    KOPF_PREFIX,
)
from kms_operator.errors import KmsError
from kms_operator.store.records import KeyRecord
from kms_operator.timestamps import rfc3339_or_none

from .. import conditions
from ..outcomes import Notice

DELETION_SCHEDULED = "DeletionScheduled"
DELETION_CANCELLED = "DeletionCancelled"
#: A cancellation refused because the namespace is being deleted.
NAMESPACE_TERMINATING = "NamespaceTerminating"
#: Handling a deletion (or creating the object again) failed; it is retried.
DELETION_FAILED = "DeletionFailed"


class Step(enum.Enum):
    #: Schedule the key's deletion; the finalizer holds the object until the destruction.
    SCHEDULE = "schedule"
    #: Cancel the deletion in the store and create the object again, Disabled.
    CANCEL = "cancel"
    #: A default key outside a terminating namespace: keep it, create the object again.
    KEEP = "keep"


@dataclass(frozen=True)
class DeletionPlan:
    step: Step
    notices: tuple[Notice, ...] = ()


def plan_deletion(
    record: KeyRecord, annotations: Mapping[str, str], *, namespace_terminating: bool
) -> DeletionPlan:
    """The step for a terminating object whose key is ``record``, and what to announce."""
    if record.is_default and not namespace_terminating:
        message = (
            "default keys cannot be deleted: the object is recreated and the key keeps working"
        )
        return DeletionPlan(
            Step.KEEP, (Notice("Warning", conditions.DEFAULT_KEY_PROTECTED, message),)
        )
    if annotations.get(CANCEL_DELETION_ANNOTATION) != "true":
        return DeletionPlan(Step.SCHEDULE)
    if not namespace_terminating:
        message = (
            f"deletion cancelled: key {record.key_id} is kept, Disabled; set spec.enabled: true "
            "to use it again"
        )
        return DeletionPlan(Step.CANCEL, (Notice("Normal", DELETION_CANCELLED, message),))
    message = (
        f"the deletion of key {record.key_id} cannot be cancelled: namespace "
        f"{record.namespace} is being deleted and no object can be created in it again"
    )
    return DeletionPlan(Step.SCHEDULE, (Notice("Warning", NAMESPACE_TERMINATING, message),))


def scheduled_message(record: KeyRecord, *, namespace_terminating: bool) -> str:
    """Why and until when ``record`` (PendingDeletion) waits, and how to cancel if one can."""
    date = rfc3339_or_none(record.deletion_date)
    if namespace_terminating:
        return (
            f"namespace {record.namespace} is being deleted: "
            + ("its default key goes with it; " if record.is_default else "")
            + f"key {record.key_id} will be destroyed at {date}, and the namespace waits until "
            "then (a namespace created again with this name gets new keys)"
        )
    return (
        f"key {record.key_id} will be destroyed at {date}; annotate "
        f"{CANCEL_DELETION_ANNOTATION}=true to cancel"
    )


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


def describe_error(exc: BaseException) -> str:
    """A short, secret-free description: our message, an HTTP status, or the type."""
    if isinstance(exc, KmsError):
        return exc.message
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return f"the API server answered {status} {getattr(exc, 'reason', '') or ''}".strip()
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def failure_message(doing: str, exc: BaseException, delay: float) -> str:
    return f"{doing} failed ({describe_error(exc)}); retrying in {delay:g} s"

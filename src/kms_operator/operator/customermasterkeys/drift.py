"""Keys without their object: detached keys and keys whose CustomerMasterKey is gone.

Drift is reported, never papered over: each such key gets a ``KeyWithoutObject`` Warning on
its name (the object may not exist, so the Event names the key) and a log line; the key
itself is kept with its schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kms_operator.contract import CMK_KIND, KEY_ID_ANNOTATION
from kms_operator.kube.objects import Objects
from kms_operator.store.records import KeyRecord, KeyState
from kms_operator.timestamps import rfc3339_or_none

from ..outcomes import Notice, ObjectRef, post_notices_now
from ..runtime import Runtime

log = logging.getLogger(__name__)

KEY_WITHOUT_OBJECT = "KeyWithoutObject"


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


def gone_message(record: KeyRecord) -> str:
    return (
        f"key {record.key_id} ({record.state}) is in the store but its CustomerMasterKey is "
        "gone; to bind it again, create the object with the same name and the annotation "
        f"{KEY_ID_ANNOTATION}={record.key_id}"
    )


def report_key_without_object(objects: Objects, record: KeyRecord, message: str) -> None:
    """A log line and a ``KeyWithoutObject`` Warning on the key's name."""
    log.warning("key without object: %s/%s: %s", record.namespace, record.name, message)
    post_notices_now(
        objects,
        ObjectRef(CMK_KIND, record.namespace, record.name, None),
        [Notice("Warning", KEY_WITHOUT_OBJECT, message)],
    )


def report_detached(objects: Objects, records: Iterable[KeyRecord]) -> None:
    """Report each key detached on the way (a binding, a namespace seen again)."""
    for record in records:
        report_key_without_object(objects, record, detached_message(record))


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
        if (watched and record.namespace not in watched) or record.state is KeyState.DESTROYED:
            continue
        if record.is_detached:
            message = detached_message(record)
        elif (record.namespace, record.name) in present:
            continue
        else:
            message = gone_message(record)
        missing += 1
        report_key_without_object(objects, record, message)
    return missing

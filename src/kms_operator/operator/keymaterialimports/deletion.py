"""Deleting a KeyMaterialImport deletes the material it imported (synchronous: in a thread).

Only its own key's material: the key named by ``status.keyId`` must be in the import's
namespace, be the key ``spec.keyRef`` names now and not be detached (status can be written by
others); and not while another live KeyMaterialImport holds the same version (the same
material imported again).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from kms_operator.contract import KMI_KIND
from kms_operator.errors import NotFound
from kms_operator.kube.imports import Imports
from kms_operator.store.records import KeyRecord, VersionState

from ..outcomes import Notice, ObjectRef, post_notices_now
from ..runtime import Runtime
from .decisions import MATERIAL_DELETED, MATERIAL_KEPT, NOT_OWN_KEY
from .importing import publish_material_change
from .views import ImportStatus, KeyMaterialImportSpec

log = logging.getLogger(__name__)


def not_own_key(
    record: KeyRecord, bound: KeyRecord | None, *, namespace: str, key_name: str
) -> str | None:
    """Why the key ``status.keyId`` names is not this import's to touch, or None if it is.

    ``bound``: the key ``spec.keyRef`` names in the import's namespace now. Status is not
    proof (anyone allowed to write it could name another key): the key must be in the same
    namespace, under the ``keyRef`` name, and be the one bound to that name (not detached).
    """
    if record.namespace != namespace or record.name != key_name:
        return f"status.keyId {record.key_id} is not the key of spec.keyRef {namespace}/{key_name}"
    if record.is_detached or bound is None or bound.key_id != record.key_id:
        return f"status.keyId {record.key_id} is not the key bound to {namespace}/{key_name} now"
    return None


def holds_version(body: Mapping[str, Any], key_id: str, version: int, *, uid: str | None) -> bool:
    """Another live object (not ``uid``) that imported ``key_id`` version ``version``."""
    meta = body.get("metadata") or {}
    if meta.get("uid") == uid or meta.get("deletionTimestamp"):
        return False
    status = ImportStatus.parse(body.get("status") or {})
    return status.key_id == key_id and status.key_version == version and status.ready_status


def delete_material(runtime: Runtime, body: Mapping[str, Any]) -> bool:
    """Delete the material ``body`` imported, if it is its own to delete; True if deleted."""
    ref = ObjectRef.of(KMI_KIND, body)
    status = ImportStatus.parse(body.get("status") or {})
    if status.key_id is None or status.key_version is None:
        return False  # nothing was imported
    service = runtime.service
    key_name = KeyMaterialImportSpec.parse(body.get("spec") or {}).key_name
    try:
        record = service.get(uuid.UUID(status.key_id))
    except (NotFound, ValueError):
        return False  # the key is destroyed (or status names no key): nothing left
    why = not_own_key(
        record, service.find(ref.namespace, key_name), namespace=ref.namespace, key_name=key_name
    )
    if why is not None:
        log.warning(
            "KeyMaterialImport %s/%s deleted: %s; no material deleted", ref.namespace, ref.name, why
        )
        message = (
            f"{why}: no material was deleted (the status was not written by the operator, or "
            "the key was replaced)"
        )
        post_notices_now(runtime.objects, ref, [Notice("Warning", NOT_OWN_KEY, message)])
        return False
    version = status.key_version
    held = record.version(version)
    if held is None or held.state is not VersionState.ENABLED:
        return False  # expired or deleted already
    holders = sorted(
        item["metadata"]["name"]
        for item in Imports.sharing(runtime.objects).list_kmis(ref.namespace)
        if holds_version(item, status.key_id, version, uid=ref.uid)
    )
    if holders:
        message = (
            f"key version {version} keeps its material: KeyMaterialImport "
            f"{', '.join(holders)} imported it too"
        )
        post_notices_now(runtime.objects, ref, [Notice("Normal", MATERIAL_KEPT, message)])
        return False
    updated = service.delete_imported_material(record.key_id, [version])
    message = (
        f"KeyMaterialImport {ref.name} was deleted: the material of version {version} is "
        f"deleted; the key is {updated.state} and cannot decrypt what version {version} "
        "encrypted until the same material is imported again"
    )
    post_notices_now(runtime.objects, ref, [Notice("Normal", MATERIAL_DELETED, message)])
    publish_material_change(runtime, updated, MATERIAL_DELETED, message)
    return True

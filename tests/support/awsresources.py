"""The Kubernetes side of the AWS lifecycle operations, in memory, for unit tests.

:class:`FakeResources` is a :class:`kms_operator.awskms.resources.Resources` over a dict of
objects: it records every write (:attr:`FakeResources.writes`), keeps resourceVersions, UIDs and
generations as the API server does (preconditions included), and plays the operator: each write
is applied to the :class:`KeyService` as the operator's handlers would apply it (the key of a
new object, the spec and a rotation request, a deletion scheduled or cancelled, import
parameters issued, inline material imported, imported material deleted). With
:attr:`FakeResources.operating` false the operator is down: writes are recorded and queued until
:meth:`FakeResources.catch_up`.
"""

from __future__ import annotations

import base64
import copy
import itertools
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kms_operator.contract import CANCEL_DELETION_ANNOTATION, KEY_ID_ANNOTATION
from kms_operator.crypto.wrapping import WrappingAlgorithm, WrappingKeySpec
from kms_operator.errors import (
    AlreadyExists,
    Conflict,
    ExpiredImportToken,
    KmsError,
    NotFound,
)
from kms_operator.keys.service import KeyService
from kms_operator.operator.customermasterkeys.deletion import fresh_object
from kms_operator.operator.customermasterkeys.specs import (
    CustomerMasterKeySpec,
    rotation_requested,
)
from kms_operator.store.records import KeyState, Origin
from kms_operator.timestamps import parse_rfc3339, rfc3339

Body = dict[str, Any]
CMK, KMI = "customermasterkeys", "keymaterialimports"


@dataclass(frozen=True)
class Write:
    verb: str  # create, patch or delete
    resource: str  # CMK or KMI
    namespace: str
    name: str
    body: Body | None  # what was created, or the patch


def merge(target: Body, patch: Body) -> Body:
    """RFC 7386 JSON merge patch."""
    result = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


class FakeResources:
    def __init__(self, service: KeyService) -> None:
        self.service = service
        self.objects: dict[tuple[str, str, str], Body] = {}
        self.writes: list[Write] = []
        self.operating = True
        self._queued: list[Callable[[], None]] = []
        self._lock = threading.RLock()
        self._versions = itertools.count(1)

    # -- test helpers ---------------------------------------------------------------------------

    def object(self, resource: str, namespace: str, name: str) -> Body | None:
        with self._lock:
            return copy.deepcopy(self.objects.get((resource, namespace, name)))

    def kmis_of(self, namespace: str, key_name: str) -> list[Body]:
        return [
            body for body in self.list_kmis(namespace) if body["spec"]["keyRef"]["name"] == key_name
        ]

    def catch_up(self) -> None:
        with self._lock:
            queued, self._queued = self._queued, []
            for step in queued:
                step()

    def _operate(self, step: Callable[[], None]) -> None:
        if self.operating:
            step()
        else:
            self._queued.append(step)

    def _new_meta(self, namespace: str, name: str, extra: Body) -> Body:
        return {
            **extra,
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "resourceVersion": str(next(self._versions)),
            "generation": 1,
        }

    def _patched(self, resource: str, namespace: str, name: str, patch: Body) -> Body:
        key = (resource, namespace, name)
        current = self.objects.get(key)
        if current is None:
            raise NotFound(f"{resource} {namespace}/{name} does not exist")
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
            raise Conflict(f"{resource} {namespace}/{name} changed")
        self.writes.append(Write("patch", resource, namespace, name, copy.deepcopy(patch)))
        patch = copy.deepcopy(patch)
        (patch.get("metadata") or {}).pop("resourceVersion", None)
        updated = merge(current, patch)
        updated["metadata"]["resourceVersion"] = str(next(self._versions))
        if updated.get("spec") != current.get("spec"):
            updated["metadata"]["generation"] = current["metadata"]["generation"] + 1
        self.objects[key] = updated
        return updated

    def _check_uid(self, resource: str, namespace: str, name: str, uid: str) -> Body:
        current = self.objects.get((resource, namespace, name))
        if current is None:
            raise NotFound(f"{resource} {namespace}/{name} does not exist")
        if current["metadata"]["uid"] != uid:
            raise Conflict(f"{resource} {namespace}/{name} is another object")
        return current

    # -- CustomerMasterKeys (Resources) ---------------------------------------------------------

    def get_cmk(self, namespace: str, name: str) -> Body | None:
        return self.object(CMK, namespace, name)

    def create_cmk(self, namespace: str, body: Body) -> Body:
        with self._lock:
            name = body["metadata"]["name"]
            if (CMK, namespace, name) in self.objects:
                raise AlreadyExists(f"{namespace}/{name} exists")
            created = copy.deepcopy(body)
            created["metadata"] = self._new_meta(namespace, name, created["metadata"])
            spec = {"enabled": True, "origin": "KMS", "pendingWindowDays": 30}
            created["spec"] = {**spec, **(created.get("spec") or {})}
            self.objects[CMK, namespace, name] = created
            self.writes.append(Write("create", CMK, namespace, name, copy.deepcopy(body)))
            self._operate(lambda: self._reconcile_cmk(namespace, name, None))
            return copy.deepcopy(created)

    def patch_cmk(self, namespace: str, name: str, patch: Body) -> Body:
        with self._lock:
            old = copy.deepcopy(self.objects.get((CMK, namespace, name)))
            updated = self._patched(CMK, namespace, name, patch)
            self._operate(lambda: self._reconcile_cmk(namespace, name, old))
            return copy.deepcopy(updated)

    def delete_cmk(self, namespace: str, name: str, uid: str) -> None:
        with self._lock:
            current = self._check_uid(CMK, namespace, name, uid)
            current["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            self.writes.append(Write("delete", CMK, namespace, name, None))
            self._operate(lambda: self._reconcile_cmk(namespace, name, None))

    # -- the operator's CustomerMasterKey handlers ----------------------------------------------

    def _reconcile_cmk(self, namespace: str, name: str, old: Body | None) -> None:
        body = self.objects.get((CMK, namespace, name))
        if body is None:
            return
        meta = body["metadata"]
        spec = CustomerMasterKeySpec.parse(body["spec"])
        if meta.get("deletionTimestamp"):
            self._terminating(body, spec)
            return
        claimed = (meta.get("annotations") or {}).get(KEY_ID_ANNOTATION)
        record = self.service.bind(
            namespace,
            name,
            namespace_uid=f"uid-of-{namespace}",
            object_uid=meta["uid"],
            claimed_key_id=uuid.UUID(claimed) if claimed else None,
        )
        if record is None:
            record = self.service.create_key(
                namespace,
                name,
                origin=Origin(spec.origin),
                description=spec.description,
                aliases=spec.aliases,
                enabled=spec.enabled,
                rotation_period_days=spec.rotation_period_days,
                namespace_uid=f"uid-of-{namespace}",
                object_uid=meta["uid"],
            )
        rotate = old is not None and rotation_requested(old, body)
        applied = self.service.apply_spec(record.key_id, spec.settings, rotate=rotate)
        body["status"] = {"keyId": str(applied.record.key_id), "state": applied.record.state}

    def _terminating(self, body: Body, spec: CustomerMasterKeySpec) -> None:
        meta = body["metadata"]
        record = self.service.find(meta["namespace"], meta["name"])
        if record is None:
            return
        if (meta.get("annotations") or {}).get(CANCEL_DELETION_ANNOTATION) == "true":
            if record.state is KeyState.PENDING_DELETION:
                self.service.cancel_deletion(record.key_id)
            fresh = fresh_object(body, record, enabled=False)
            fresh["metadata"] = self._new_meta(meta["namespace"], meta["name"], fresh["metadata"])
            self.objects[CMK, meta["namespace"], meta["name"]] = fresh
            self._reconcile_cmk(meta["namespace"], meta["name"], None)
            return
        self.service.schedule_deletion(record.key_id, spec.pending_window_days)

    # -- KeyMaterialImports (Resources) ---------------------------------------------------------

    def list_kmis(self, namespace: str) -> list[Body]:
        with self._lock:
            return [
                copy.deepcopy(body)
                for (resource, ns, _), body in sorted(self.objects.items())
                if resource == KMI and ns == namespace
            ]

    def get_kmi(self, namespace: str, name: str) -> Body | None:
        return self.object(KMI, namespace, name)

    def create_kmi(self, namespace: str, body: Body) -> Body:
        with self._lock:
            name = body["metadata"]["name"]
            if (KMI, namespace, name) in self.objects:
                raise AlreadyExists(f"{namespace}/{name} exists")
            created = copy.deepcopy(body)
            created["metadata"] = self._new_meta(namespace, name, created["metadata"])
            self.objects[KMI, namespace, name] = created
            self.writes.append(Write("create", KMI, namespace, name, copy.deepcopy(body)))
            self._operate(lambda: self._reconcile_kmi(namespace, name))
            return copy.deepcopy(created)

    def patch_kmi(self, namespace: str, name: str, patch: Body) -> Body:
        with self._lock:
            updated = self._patched(KMI, namespace, name, patch)
            self._operate(lambda: self._reconcile_kmi(namespace, name))
            return copy.deepcopy(updated)

    def delete_kmi(self, namespace: str, name: str, uid: str) -> None:
        with self._lock:
            current = self._check_uid(KMI, namespace, name, uid)
            del self.objects[KMI, namespace, name]
            self.writes.append(Write("delete", KMI, namespace, name, None))
            self._operate(lambda: self._material_deleted(current))

    # -- the operator's KeyMaterialImport handlers ----------------------------------------------

    def _reconcile_kmi(self, namespace: str, name: str) -> None:
        body = self.objects.get((KMI, namespace, name))
        if body is None:
            return
        spec, status = body["spec"], body.setdefault("status", {})
        generation = body["metadata"]["generation"]
        if status.get("keyVersion") is not None:
            return
        record = self.service.find(namespace, spec["keyRef"]["name"])
        if record is None:
            return
        if not status.get("importToken"):
            try:
                params = self.service.create_import_parameters(
                    record.key_id,
                    WrappingAlgorithm(spec.get("wrappingAlgorithm", "RSAES_OAEP_SHA_256")),
                    WrappingKeySpec(spec.get("wrappingKeySpec", "RSA_4096")),
                )
            except KmsError as exc:
                self._failed(status, generation, exc)
                return
            status.update(
                keyId=str(params.key_id),
                wrappingPublicKey=params.public_key_pem,
                importToken=params.token,
                parametersExpireAt=rfc3339(params.expires_at),
                phase="WaitingForMaterial",
                observedGeneration=generation,
            )
        if spec.get("encryptedKeyMaterial"):
            try:
                _, version = self.service.import_material(
                    record.key_id,
                    spec.get("importToken") or status["importToken"],
                    base64.b64decode(spec["encryptedKeyMaterial"]),
                    parse_rfc3339(spec.get("validTo")),
                )
            except KmsError as exc:
                self._failed(status, generation, exc)
                return
            status.update(
                phase="Imported",
                keyVersion=version,
                observedGeneration=generation,
                conditions=[{"type": "Ready", "status": "True", "reason": "Imported"}],
            )

    @staticmethod
    def _failed(status: Body, generation: int, exc: KmsError) -> None:
        status.update(
            phase="Expired" if isinstance(exc, ExpiredImportToken) else "Failed",
            observedGeneration=generation,
            conditions=[
                {"type": "Ready", "status": "False", "reason": exc.code, "message": exc.message}
            ],
        )

    def _material_deleted(self, body: Body) -> None:
        status = body.get("status") or {}
        if status.get("phase") == "Imported":
            self.service.delete_imported_material(
                uuid.UUID(status["keyId"]), [int(status["keyVersion"])]
            )

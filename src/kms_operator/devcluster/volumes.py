"""PersistentVolumes for the local node: the default StorageClass ``kms-local`` and a thread that
binds each Pending claim of it to a new local volume, a directory under the work directory.
"""

from __future__ import annotations

import threading
from typing import Any

from kms_operator.devcluster.config import NodeLayout
from kms_operator.devcluster.rest import ApiError, Rest

__all__ = ["PROVISIONER", "STORAGE_CLASS", "VolumeProvisioner"]

STORAGE_CLASS = "kms-local"
PROVISIONER = "kms.cmk.dev/devcluster-local"
#: Consecutive failed rounds (one a second) after which the provisioner gives up.
_MAX_FAILURES = 30


class VolumeProvisioner:
    """Provisions the claims of :data:`STORAGE_CLASS`; ``error`` says why it stopped, if so."""

    def __init__(self, rest: Rest, layout: NodeLayout) -> None:
        self._rest = rest
        self._layout = layout
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def start(self) -> None:
        self._rest.create(
            "/apis/storage.k8s.io/v1/storageclasses",
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {
                    "name": STORAGE_CLASS,
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                "provisioner": PROVISIONER,
                "reclaimPolicy": "Retain",
                "volumeBindingMode": "Immediate",
            },
        )
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._loop, name="kms-devcluster-volumes", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _loop(self) -> None:
        failures = 0
        while not self._stopping.wait(1.0):
            try:
                self._provision_once()
                failures = 0
            except (OSError, ApiError, ValueError) as exc:
                failures += 1
                if failures >= _MAX_FAILURES:
                    self.error = str(exc)
                    return

    def _provision_once(self) -> None:
        claims = self._rest.get("/api/v1/persistentvolumeclaims").get("items", [])
        for claim in claims:
            spec = claim.get("spec", {})
            if claim.get("status", {}).get("phase") != "Pending" or spec.get("volumeName"):
                continue
            if spec.get("storageClassName") != STORAGE_CLASS:
                continue
            self._rest.create("/api/v1/persistentvolumes", self._volume_for(claim))

    def _volume_for(self, claim: dict[str, Any]) -> dict[str, Any]:
        meta, spec = claim["metadata"], claim["spec"]
        uid = meta["uid"]
        directory = self._layout.path("volumes", f"{meta['namespace']}-{meta['name']}-{uid[:8]}")
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": f"{STORAGE_CLASS}-{uid}",
                "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            },
            "spec": {
                "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                "accessModes": spec.get("accessModes", ["ReadWriteOnce"]),
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": STORAGE_CLASS,
                "volumeMode": "Filesystem",
                "claimRef": {
                    "kind": "PersistentVolumeClaim",
                    "apiVersion": "v1",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": uid,
                },
                "local": {"path": str(directory)},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/hostname",
                                        "operator": "In",
                                        "values": [self._layout.node_name],
                                    },
                                ]
                            }
                        ]
                    }
                },
            },
        }

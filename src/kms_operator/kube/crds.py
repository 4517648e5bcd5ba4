"""Installing our CRDs and namespace (for ``kms-operator run`` on a local control plane)."""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException


def apply_crds(api_client: client.ApiClient, directory: Path, timeout: float = 60.0) -> list[str]:
    """Create or replace every CRD in ``directory`` and wait until each is Established."""
    api = client.ApiextensionsV1Api(api_client)
    names = []
    for path in sorted(directory.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not document or document.get("kind") != "CustomResourceDefinition":
                continue
            name = document["metadata"]["name"]
            try:
                current = api.read_custom_resource_definition(name)
                assert current.metadata is not None
                document["metadata"]["resourceVersion"] = current.metadata.resource_version
                api.replace_custom_resource_definition(name, document)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                api.create_custom_resource_definition(document)
            names.append(name)
    deadline = time.monotonic() + timeout
    custom = client.CustomObjectsApi(api_client)
    for name in names:
        while True:
            crd = api.read_custom_resource_definition(name)
            established = any(
                c.type == "Established" and c.status == "True"
                for c in ((crd.status.conditions if crd.status else None) or [])
            )
            if established and _serves(custom, crd):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} was not Established within {timeout} s")
            time.sleep(0.2)
    return names


def _serves(custom: client.CustomObjectsApi, crd: client.V1CustomResourceDefinition) -> bool:
    """Established is not enough: right after it, lists answer 429 while storage initializes."""
    spec = crd.spec
    version = next(v.name for v in spec.versions if v.storage)
    try:
        custom.list_cluster_custom_object(spec.group, version, spec.names.plural, limit=1)
    except ApiException as exc:
        if exc.status == 429:
            return False
        raise
    return True


def ensure_namespace(api_client: client.ApiClient, name: str) -> None:
    try:
        client.CoreV1Api(api_client).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
        )
    except ApiException as exc:
        if exc.status != 409:
            raise

"""The API calls of ``KeyMaterialImport`` handling: its objects and the material Secret.

The Secret is read with one ``get`` by the name the user put in
``spec.encryptedKeyMaterialSecretRef`` (no list, no watch: the operator never caches Secrets).
Its content is wrapped key material: it is returned as bytes and never logged.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kms_operator.contract import GROUP, KMI_PLURAL, VERSION

from .objects import Objects

Body = dict[str, Any]


class SecretValueMissing(Exception):
    """The Secret, or the key in its data, does not exist (the message says which)."""


class Conflict(Exception):
    """The object changed since it was read (resourceVersion precondition failed)."""


class Imports:
    """Sync calls for the ``KeyMaterialImport`` handlers (run them in a thread)."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)

    @classmethod
    def sharing(cls, objects: Objects) -> Imports:
        """The same API client (connection pool, identity) as the operator's ``Objects``."""
        return cls(objects._custom.api_client)

    def read_secret_value(self, namespace: str, name: str, key: str) -> bytes:
        """The raw bytes under ``key`` in Secret ``namespace/name``."""
        try:
            secret = self._core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise SecretValueMissing(f"Secret {namespace}/{name} does not exist") from None
            raise
        encoded = (secret.data or {}).get(key)
        if encoded is None:
            raise SecretValueMissing(f"Secret {namespace}/{name} has no key {key!r} in its data")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise SecretValueMissing(
                f"Secret {namespace}/{name} key {key!r} is not valid base64 data"
            ) from None

    def list_kmis(self, namespace: str) -> list[Body]:
        answer = self._custom.list_namespaced_custom_object(GROUP, VERSION, namespace, KMI_PLURAL)
        return list(cast(Body, answer).get("items", []))

    def patch_kmi_status(
        self, namespace: str, name: str, status: Body, *, resource_version: str | None = None
    ) -> None:
        """Merge ``status``; with ``resource_version``, only if the object did not change since."""
        body: Body = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, KMI_PLURAL, name, body
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                raise Conflict(f"{namespace}/{name} changed or is gone") from None
            raise

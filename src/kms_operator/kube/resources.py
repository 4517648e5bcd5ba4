"""The writes of the AWS lifecycle operations on our custom resources (sync client calls).

:class:`KeyResources` is the Kubernetes side of :class:`kms_operator.awskms.resources.Resources`:
CustomerMasterKeys through :class:`.objects.Objects`, KeyMaterialImports through
:class:`.imports.Imports` and the calls they lack, with the API server's refusals turned into
domain errors (``NotFound``, ``AlreadyExists``, ``Conflict``, ``InvalidRequest``). Deletes carry
a UID precondition, so an object created again under the same name is never deleted by a call
that meant the old one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kms_operator.contract import CMK_KIND, CMK_PLURAL, GROUP, KMI_KIND, KMI_PLURAL, VERSION
from kms_operator.errors import AlreadyExists, Conflict, InvalidRequest, NotFound

from .imports import Imports
from .objects import Objects

Body = dict[str, Any]
T = TypeVar("T")

#: Longest text of the API server's own message copied into a refusal.
MAX_MESSAGE_CHARS = 1024


def _refusal(exc: ApiException) -> tuple[str, str]:
    """The ``reason`` and (bounded) ``message`` of the API server's Status answer."""
    try:
        status = json.loads(exc.body or "{}")
    except ValueError:
        status = {}
    if not isinstance(status, dict):
        status = {}
    message = str(status.get("message") or exc.reason or exc.status)[:MAX_MESSAGE_CHARS]
    return str(status.get("reason") or ""), message


def _translated(kind: str, namespace: str, name: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except ApiException as exc:
        where = f"{kind} {namespace}/{name}"
        reason, message = _refusal(exc)
        if exc.status == 404:
            raise NotFound(f"{where} (or its namespace) does not exist") from None
        if exc.status == 409 and reason == "AlreadyExists":
            raise AlreadyExists(f"{where} exists already") from None
        if exc.status == 409:
            raise Conflict(f"{where} changed meanwhile: {message}") from None
        if exc.status in (400, 422):
            raise InvalidRequest(f"the API server refused {where}: {message}") from None
        raise


class KeyResources:
    """CustomerMasterKey and KeyMaterialImport calls of the AWS front end (run in a thread)."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._objects = Objects(api_client)
        self._imports = Imports(api_client)
        self._custom = client.CustomObjectsApi(api_client)

    # -- CustomerMasterKeys --------------------------------------------------------------------

    def get_cmk(self, namespace: str, name: str) -> Body | None:
        return self._objects.get_cmk(namespace, name)

    def create_cmk(self, namespace: str, body: Body) -> Body:
        name = str(body["metadata"]["name"])
        return _translated(
            CMK_KIND, namespace, name, lambda: self._objects.create_cmk(namespace, body)
        )

    def patch_cmk(self, namespace: str, name: str, patch: Body) -> Body:
        return _translated(
            CMK_KIND, namespace, name, lambda: self._objects.patch_cmk(namespace, name, patch)
        )

    def delete_cmk(self, namespace: str, name: str, uid: str) -> None:
        self._delete(CMK_KIND, CMK_PLURAL, namespace, name, uid)

    # -- KeyMaterialImports --------------------------------------------------------------------

    def list_kmis(self, namespace: str) -> list[Body]:
        return self._imports.list_kmis(namespace)

    def get_kmi(self, namespace: str, name: str) -> Body | None:
        try:
            return cast(
                Body,
                self._custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, KMI_PLURAL, name
                ),
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_kmi(self, namespace: str, body: Body) -> Body:
        name = str(body["metadata"]["name"])
        return _translated(
            KMI_KIND,
            namespace,
            name,
            lambda: cast(
                Body,
                self._custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, KMI_PLURAL, body
                ),
            ),
        )

    def patch_kmi(self, namespace: str, name: str, patch: Body) -> Body:
        return _translated(
            KMI_KIND,
            namespace,
            name,
            lambda: cast(
                Body,
                self._custom.patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, KMI_PLURAL, name, patch
                ),
            ),
        )

    def delete_kmi(self, namespace: str, name: str, uid: str) -> None:
        self._delete(KMI_KIND, KMI_PLURAL, namespace, name, uid)

    def _delete(self, kind: str, plural: str, namespace: str, name: str, uid: str) -> None:
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
        _translated(
            kind,
            namespace,
            name,
            lambda: self._custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, body=options
            ),
        )

"""Reads and writes of the Secrets a ``DataKey`` owns (sync client calls).

Bodies are plain dicts in the API's JSON shape (``data`` values base64), never client models,
so the operator builds and compares them with pure functions. Errors never carry a request or
response body: a Secret's data must not reach a log line through an exception.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .client import load_api_client

Body = dict[str, Any]


class SecretWriteFailed(Exception):
    """The API server refused a Secret read or write; the message names status and reason."""

    def __init__(self, action: str, namespace: str, name: str, exc: ApiException) -> None:
        self.status = exc.status
        super().__init__(
            f"{action} Secret {namespace}/{name}: HTTP {exc.status} {exc.reason or ''}".rstrip()
        )


class SecretRaced(Exception):
    """Someone else wrote the Secret in between (AlreadyExists, or a stale resourceVersion)."""


class Secrets:
    """Get, create and replace one Secret at a time; nothing lists or watches Secrets."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._api_client = api_client
        self._core = client.CoreV1Api(api_client)

    @classmethod
    def connect(cls, kubeconfig: Path | None) -> Secrets:
        return cls(load_api_client(kubeconfig))

    def close(self) -> None:
        self._api_client.close()  # type: ignore[no-untyped-call]

    def get(self, namespace: str, name: str) -> Body | None:
        try:
            response = self._core.read_namespaced_secret(name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise SecretWriteFailed("reading", namespace, name, exc) from None
        return cast(Body, json.loads(cast(Any, response).data))

    def create(self, namespace: str, body: Body) -> None:
        name = body["metadata"]["name"]
        try:
            self._core.create_namespaced_secret(namespace, cast(Any, body), _preload_content=False)
        except ApiException as exc:
            if exc.status == 409:
                raise SecretRaced(f"Secret {namespace}/{name} appeared meanwhile") from None
            raise SecretWriteFailed("creating", namespace, name, exc) from None

    def replace(self, namespace: str, body: Body) -> None:
        """PUT with the body's ``resourceVersion``: a concurrent change makes it fail, not win."""
        name = body["metadata"]["name"]
        try:
            self._core.replace_namespaced_secret(
                name, namespace, cast(Any, body), _preload_content=False
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                raise SecretRaced(f"Secret {namespace}/{name} changed meanwhile") from None
            raise SecretWriteFailed("updating", namespace, name, exc) from None

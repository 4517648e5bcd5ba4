"""The KMS v2 plugin API in Python: the generated messages and service, behind typed names.

The messages come from ``v2/api_pb2`` (typed by its generated ``.pyi``); the service module
``v2/api_pb2_grpc`` has no types at all, and neither has ``grpc`` itself, so this module is
the one place that touches them: :class:`KeyManagementServicer` is what a server implements,
:func:`add_to_server` registers it, :class:`KmsPluginClient` is what kube-apiserver does (the
tests and the benchmark call the plugin through it).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, cast

import grpc

from .v2 import api_pb2, api_pb2_grpc

#: What ``StatusResponse.version`` says; kube-apiserver refuses any other.
API_VERSION = "v2"
#: The full gRPC service name kube-apiserver calls (``/v2.KeyManagementService/Status``).
SERVICE_NAME = "v2.KeyManagementService"
#: The one ``StatusResponse.healthz`` kube-apiserver counts as healthy.
HEALTHZ_OK = "ok"

StatusRequest = api_pb2.StatusRequest
StatusResponse = api_pb2.StatusResponse
EncryptRequest = api_pb2.EncryptRequest
EncryptResponse = api_pb2.EncryptResponse
DecryptRequest = api_pb2.DecryptRequest
DecryptResponse = api_pb2.DecryptResponse

#: ``grpc.ServicerContext`` (grpc has no types: the alias keeps the signatures readable).
ServicerContext = Any


class KeyManagementServicer(abc.ABC):
    """The server's side of ``v2.KeyManagementService``; the method names are the RPCs'."""

    @abc.abstractmethod
    def Status(self, request: StatusRequest, context: ServicerContext) -> StatusResponse: ...

    @abc.abstractmethod
    def Encrypt(self, request: EncryptRequest, context: ServicerContext) -> EncryptResponse: ...

    @abc.abstractmethod
    def Decrypt(self, request: DecryptRequest, context: ServicerContext) -> DecryptResponse: ...


def add_to_server(servicer: KeyManagementServicer, server: Any) -> None:
    """Register ``servicer`` on a ``grpc.Server``, with the generated method handlers."""
    api_pb2_grpc.add_KeyManagementServiceServicer_to_server(servicer, server)


def unix_target(socket_path: Path) -> str:
    """The gRPC target of a unix socket (what ``endpoint: unix://…`` names)."""
    return f"unix:{socket_path}"


class KmsPluginClient:
    """Calls a plugin as kube-apiserver does, over a ``grpc.Channel``."""

    def __init__(self, channel: Any, *, timeout: float = 10.0) -> None:
        self._stub = api_pb2_grpc.KeyManagementServiceStub(channel)
        self._timeout = timeout

    def status(self) -> StatusResponse:
        return cast(StatusResponse, self._stub.Status(StatusRequest(), timeout=self._timeout))

    def encrypt(self, plaintext: bytes, *, uid: str = "") -> EncryptResponse:
        request = EncryptRequest(plaintext=plaintext, uid=uid)
        return cast(EncryptResponse, self._stub.Encrypt(request, timeout=self._timeout))

    def decrypt(
        self,
        ciphertext: bytes,
        key_id: str,
        *,
        uid: str = "",
        annotations: Mapping[str, bytes] | None = None,
    ) -> DecryptResponse:
        request = DecryptRequest(
            ciphertext=ciphertext, uid=uid, key_id=key_id, annotations=annotations
        )
        return cast(DecryptResponse, self._stub.Decrypt(request, timeout=self._timeout))


@contextmanager
def connect(socket_path: Path, *, timeout: float = 10.0) -> Iterator[KmsPluginClient]:
    """A client on the plugin's unix socket, its channel closed on the way out."""
    channel = grpc.insecure_channel(unix_target(socket_path))
    try:
        yield KmsPluginClient(channel, timeout=timeout)
    finally:
        channel.close()


def abort(context: ServicerContext, code: Any, details: str) -> NoReturn:
    """End the call with a gRPC status (``code`` a ``grpc.StatusCode``)."""
    context.abort(code, details)
    raise AssertionError("ServicerContext.abort always raises")  # for the type checker

"""``v2.KeyManagementService`` over the node's :class:`~kms_operator.keys.service.KeyService`.

* ``Encrypt`` seals under the current version of the plugin's key (``--key``): the ciphertext
  is the KMS1 blob of DESIGN.md section 4 (36 bytes of header, the plaintext, a 16-byte tag:
  84 bytes for kube-apiserver's 32-byte DEK seed), with no encryption context and no
  annotations. The key_id returned names exactly the version that sealed it.
* ``Decrypt`` opens a blob of any version of any key of the plugin's store (older versions keep
  decrypting after a rotation; so do blobs of a key no longer ``--key``), once the request's
  key_id is one this plugin issues and names the very key and version of the blob's header.
* ``Status`` reports ``v2``, the health and the key_id (:mod:`.health`).

Keys change while the plugin serves (``kms-operator kms-plugin keys`` writes the store from
another process): ``Status`` always calls :meth:`KeyService.refresh`, the crypto calls at most
every :data:`REFRESH_INTERVAL_SECONDS`, so a rotation is served within about a second and
reported at the next Status.

Domain errors map once to gRPC codes: a bad request or ciphertext is ``INVALID_ARGUMENT``, a
key in the wrong state (or missing) ``FAILED_PRECONDITION``, a store failure ``UNAVAILABLE``.
Messages and logs carry key ids, versions, states and request uids, never plaintext.
"""

from __future__ import annotations

import logging
import threading
from typing import NoReturn

import grpc

from kms_operator.crypto import blob as blobs
from kms_operator.errors import InvalidCiphertext, InvalidRequest, KeyStateError, KmsError, NotFound
from kms_operator.keys.service import DecryptResult, KeyService

from . import protocol
from .health import HEALTH_TTL_SECONDS, Health, HealthCheck
from .nodekeys import PLUGIN_NAMESPACE, NodeKeys, key_id_text, parse_key_id

log = logging.getLogger(__name__)

#: The crypto calls look for changes of the store at most this often (Status: every time).
REFRESH_INTERVAL_SECONDS = 1.0
_UID_IN_LOGS = 64  # kube-apiserver's uids are UUIDs; a longer one is cut in logs


class KmsPluginServicer(protocol.KeyManagementServicer):
    """The plugin's three calls for the key ``key_name`` of the plugin's store."""

    def __init__(
        self,
        service: KeyService,
        key_name: str,
        *,
        health_ttl: float = HEALTH_TTL_SECONDS,
    ) -> None:
        self._service = service
        self._key_name = key_name
        self._health = HealthCheck(NodeKeys(service), key_name, ttl=health_ttl)
        self._refreshed_at = self._seconds()
        self._reported_lock = threading.Lock()
        self._reported: Health | None = None

    # -- the RPCs --------------------------------------------------------------------------

    def Status(
        self, request: protocol.StatusRequest, context: protocol.ServicerContext
    ) -> protocol.StatusResponse:
        self._refresh(now=True)
        health = self._health.check()
        self._log_change(health)
        return protocol.StatusResponse(
            version=protocol.API_VERSION, healthz=health.healthz, key_id=health.key_id
        )

    def Encrypt(
        self, request: protocol.EncryptRequest, context: protocol.ServicerContext
    ) -> protocol.EncryptResponse:
        self._refresh()
        try:
            sealed = self._service.encrypt(PLUGIN_NAMESPACE, self._key_name, request.plaintext)
        except KmsError as exc:
            self._refuse(context, "Encrypt", request.uid, exc)
        key_id = key_id_text(sealed.key_id, sealed.key_version)
        log.debug("Encrypt uid=%.*s: sealed under %s", _UID_IN_LOGS, request.uid, key_id)
        return protocol.EncryptResponse(ciphertext=sealed.ciphertext_blob, key_id=key_id)

    def Decrypt(
        self, request: protocol.DecryptRequest, context: protocol.ServicerContext
    ) -> protocol.DecryptResponse:
        self._refresh()
        try:
            opened = self._decrypt(request.ciphertext, request.key_id)
        except KmsError as exc:
            self._refuse(context, "Decrypt", request.uid, exc)
        log.debug(
            "Decrypt uid=%.*s: opened under %s",
            _UID_IN_LOGS,
            request.uid,
            key_id_text(opened.key_id, opened.key_version),
        )
        return protocol.DecryptResponse(plaintext=opened.plaintext)

    # -- internals -------------------------------------------------------------------------

    def _decrypt(self, ciphertext: bytes, key_id: str) -> DecryptResult:
        named = parse_key_id(key_id)
        if named is None:
            raise InvalidRequest(
                "the key_id is not one this plugin issues (<key id>:<version>)", field="key_id"
            )
        header = blobs.parse_header(ciphertext)
        if (header.key_id, header.version) != named:
            raise InvalidRequest(
                f"key_id {key_id} does not name the key and version in the ciphertext's header",
                field="key_id",
            )
        try:
            record = self._service.get(header.key_id)
        except NotFound:
            record = None
        if (
            record is None
            or record.namespace != PLUGIN_NAMESPACE
            or record.version(header.version) is None
        ):
            raise InvalidRequest(
                f"key_id {key_id} names no key version of this plugin's store", field="key_id"
            )
        return self._service.decrypt(ciphertext)

    def _seconds(self) -> float:
        return self._service.clock.monotonic_ns() / 1e9

    def _refresh(self, *, now: bool = False) -> None:
        moment = self._seconds()
        if not now and moment - self._refreshed_at < REFRESH_INTERVAL_SECONDS:
            return
        self._refreshed_at = moment
        try:
            self._service.refresh()
        except KmsError as exc:  # serve what is known; the next call tries again
            log.warning("could not look for changes of the store: %s", exc.message)

    def _log_change(self, health: Health) -> None:
        with self._reported_lock:
            before, self._reported = self._reported, health
        if before == health:
            return
        if before is not None and before.key_id != health.key_id:
            log.info("key_id is now %r (was %r)", health.key_id, before.key_id)
        if health.ok:
            if before is None or not before.ok:
                log.info("healthy: Status reports ok with key_id %r", health.key_id)
        else:
            log.warning("unhealthy: Status reports %r", health.healthz)

    @staticmethod
    def _refuse(context: protocol.ServicerContext, call: str, uid: str, exc: KmsError) -> NoReturn:
        code = _status_code(exc)
        log.warning("%s uid=%.*s refused (%s): %s", call, _UID_IN_LOGS, uid, code.name, exc.message)
        protocol.abort(context, code, exc.message)


def _status_code(exc: KmsError) -> grpc.StatusCode:
    if isinstance(exc, InvalidCiphertext | InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, KeyStateError | NotFound):
        return grpc.StatusCode.FAILED_PRECONDITION
    if exc.retryable:
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL

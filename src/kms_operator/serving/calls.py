"""One call of an HTTP front end, from request to answer: authenticate, authorize, audit,
measure, map errors; the same for every front end on the listener.

Route handlers describe *what* a call does as a coroutine taking a :class:`Call` and returning
the answer; :func:`run` does the rest the same way for every route, in the wire format of the
front end's :class:`Protocol` (where the token travels, how answers and errors are written):

* ``KmsError`` → the protocol's error answer; anything else → 500 with a generic message (the
  traceback goes to the log, never material);
* the audit line is written **before** the answer is returned, and if it cannot be written
  the caller gets a 500 and no result (fail-closed);
* the outcome and latency go to the metrics;
* the body must arrive within the request timeout (``408``, and the connection is closed);
  the request head is bounded by the server's keep-alive timer (:mod:`.server`).

Text the caller chose (the namespace of the path, a key reference) is bounded before it is
copied anywhere: audit fields are cut by :func:`.audit.bounded`, and a namespace or key
reference longer than any that can exist is an ``InvalidRequest`` before any review.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from aiohttp import web

from kms_operator.errors import (
    AccessDenied,
    InvalidRequest,
    KeyPendingDeletion,
    KmsError,
    NotFound,
    Unauthenticated,
)
from kms_operator.keys.service import KeyService
from kms_operator.kube.reviews import UserInfo
from kms_operator.store.records import KeyRecord

from .audit import AuditRecord, AuditSink, bounded
from .auth import Authenticator, Authorizer
from .metrics import ApiMetrics

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "an internal error occurred; the request id is in the server log"
AUDIT_FAILED_MESSAGE = "the call was refused because its audit record could not be written"
REQUEST_ID_HEADER = "X-Request-Id"

NO_ROUTE = "no-route"

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
#: Request ids: a per-process random prefix and a counter (unique, cheap, not guessable
#: across restarts; they only correlate an answer, its audit line and the log).
_REQUEST_PREFIX = os.urandom(4).hex()
_request_numbers = itertools.count(1)

#: ``str(uuid)`` costs microseconds; key ids repeat, so remember their text.
uuid_text = functools.lru_cache(maxsize=4096)(str)

#: Longest namespace (a DNS label) and key reference (``alias/`` + 250) that can exist.
MAX_NAMESPACE_CHARS = 63
MAX_REFERENCE_CHARS = 256

#: A readiness check: None when healthy, else a short text saying what is wrong.
ReadinessCheck = Callable[[], str | None]


class RequestTimedOut(InvalidRequest):
    """The request body did not arrive within the request timeout."""

    status: ClassVar[int] = 408


@dataclass(slots=True)
class ApiState:
    service: KeyService
    authenticator: Authenticator
    authorizer: Authorizer
    audit: AuditSink
    metrics: ApiMetrics
    max_body_bytes: int
    request_timeout_seconds: float = 10.0
    readiness_checks: Sequence[ReadinessCheck] = ()
    ready: bool = field(default=False)


STATE = web.AppKey("kms_api_state", ApiState)


def encode_json(value: object) -> bytes:
    return _encode(value).encode("utf-8")


def error_body(code: str, message: str) -> bytes:
    """The listener's own error format (the native API's), also for paths nobody serves."""
    return encode_json({"error": {"code": code, "message": message}})


def json_response(status: int, body: bytes, request_id: str | None = None) -> web.Response:
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


class WireProtocol(Protocol):
    """How one front end reads the caller's token and writes answers and errors."""

    def token(self, request: web.Request) -> str:
        """The caller's token (``Unauthenticated`` when the request carries none)."""

    def answer(self, result: object) -> bytes:
        """The body of a successful answer (``application/json``-like, see :attr:`content_type`)."""

    def error(self, error: KmsError) -> tuple[int, bytes]:
        """The status and body of a refusal; ``InternalError`` stands for every unexpected one."""

    @property
    def content_type(self) -> str: ...


class Call:
    """What a handler may do during one call; it also fills the audit record as it goes."""

    __slots__ = ("audit", "deadline", "protocol", "request", "state", "user")

    def __init__(
        self,
        request: web.Request,
        state: ApiState,
        audit: AuditRecord,
        deadline: float | None = None,
        protocol: WireProtocol | None = None,
    ) -> None:
        self.request = request
        self.state = state
        self.audit = audit
        self.protocol = protocol
        self.user: UserInfo | None = None
        #: Loop time by which the body must have arrived.
        self.deadline = (
            deadline
            if deadline is not None
            else asyncio.get_running_loop().time() + state.request_timeout_seconds
        )

    @property
    def service(self) -> KeyService:
        return self.state.service

    async def authenticate(self) -> UserInfo:
        assert self.protocol is not None, "a call run by run() knows its protocol"
        token = self.protocol.token(self.request)
        self.user = await self.state.authenticator.authenticate(token)
        self.audit.caller = self.user.username
        return self.user

    async def body(self) -> bytes:
        try:
            async with asyncio.timeout_at(self.deadline):
                return await self.request.read()
        except web.HTTPRequestEntityTooLarge:
            raise InvalidRequest(
                f"the request body is larger than {self.state.max_body_bytes} bytes",
                field="body",
            ) from None
        except TimeoutError:
            raise RequestTimedOut(
                "the request body did not arrive within "
                f"{self.state.request_timeout_seconds:g} seconds",
                field="body",
            ) from None

    async def authorize(self, verb: str, record: KeyRecord) -> None:
        """Authorize ``verb`` on a key the caller did not name: the key of a blob.

        A refusal names the key by its id only (the blob's header holds it already), never by
        its name and namespace, which a caller without any right on it must not learn.
        """
        assert self.user is not None, "authenticate() first"
        try:
            await self.state.authorizer.authorize(self.user, verb, record.namespace, record.name)
        except AccessDenied:
            raise AccessDenied(
                f"user {self.user.username!r} may not {verb} with key {uuid_text(record.key_id)}"
            ) from None

    async def resolve(self, verb: str, namespace: str, reference: str) -> KeyRecord:
        """The key ``reference`` names in ``namespace``, once the caller may ``verb`` it.

        A reference that names no key is authorized against the reference itself before the
        ``NotFound``, so a caller without the verb learns nothing about which keys exist.
        A namespace or reference longer than any that can exist is refused before that.
        """
        assert self.user is not None, "authenticate() first"
        self.audit.namespace = bounded(namespace)
        if len(namespace) > MAX_NAMESPACE_CHARS:
            raise InvalidRequest(
                f"the namespace is longer than {MAX_NAMESPACE_CHARS} characters",
                field="namespace",
            )
        if len(reference) > MAX_REFERENCE_CHARS:
            self.audit.key_name = bounded(reference)
            raise InvalidRequest(
                f"the key reference is longer than {MAX_REFERENCE_CHARS} characters", field="key"
            )
        try:
            record = self.service.resolve(namespace, reference)
        except NotFound:
            self.audit.key_name = reference
            await self.state.authorizer.authorize(self.user, verb, namespace, reference)
            raise
        self.note_key(record)
        await self.authorize(verb, record)
        return record

    def note_key(self, record: KeyRecord, version: int | None = None) -> None:
        self.audit.namespace = record.namespace
        self.audit.key_name = record.name
        self.audit.key_id = uuid_text(record.key_id)
        if version is not None:
            self.audit.key_version = version

    def note_source(self, record: KeyRecord, version: int) -> None:
        self.audit.source_namespace = record.namespace
        self.audit.source_key_name = record.name
        self.audit.source_key_id = uuid_text(record.key_id)
        self.audit.source_key_version = version


Work = Callable[[Call], Awaitable[object]]


def answer(
    protocol: WireProtocol, status: int, body: bytes, request_id: str | None = None
) -> web.Response:
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    return web.Response(
        status=status, body=body, content_type=protocol.content_type, headers=headers
    )


async def run(
    request: web.Request,
    operation: str,
    work: Work,
    protocol: WireProtocol,
    *,
    namespace: str | None = None,
) -> web.Response:
    """Run ``work`` as the call ``operation`` (its name in the audit trail and the metrics).

    ``namespace``: the namespace the request names before it is read (the path's), if any.
    """
    started = time.perf_counter()
    state = request.app[STATE]
    request_id = f"{_REQUEST_PREFIX}-{next(_request_numbers)}"
    audit = AuditRecord(operation, request_id, remote_address=request.remote)
    # Before authentication: copy no more of the caller's text than an audit field holds.
    audit.namespace = bounded(namespace)
    call = Call(
        request,
        state,
        audit,
        asyncio.get_running_loop().time() + state.request_timeout_seconds,
        protocol,
    )
    status = 200
    close = False
    retry_after = False
    try:
        body = protocol.answer(await work(call))
        audit.outcome = "allowed"
    except KmsError as exc:
        audit.outcome = "denied" if isinstance(exc, Unauthenticated | AccessDenied) else "error"
        audit.error_code = exc.code
        if isinstance(exc, KeyPendingDeletion):
            log.warning(
                "refused %s by %s on key %s/%s (%s): the key is pending deletion",
                operation,
                audit.caller,
                audit.namespace,
                audit.key_name,
                audit.key_id,
            )
        if exc.status == 503:
            retry_after = True  # overload: the pool that refused logs it, rate-limited
        elif exc.status >= 500:
            log.error("%s failed (request %s): %s", operation, request_id, exc.message)
        close = isinstance(exc, RequestTimedOut)
        status, body = protocol.error(exc)
    except Exception:
        log.exception("internal error in %s (request %s)", operation, request_id)
        audit.outcome = "error"
        audit.error_code = KmsError.code
        status, body = protocol.error(KmsError(INTERNAL_MESSAGE))
    try:
        state.audit.write(audit)
    except Exception as exc:
        log.error(
            "audit line for %s (request %s) could not be written (%s): call refused",
            operation,
            request_id,
            type(exc).__name__,
        )
        state.metrics.observe(operation, "error", time.perf_counter() - started)
        return answer(protocol, *protocol.error(KmsError(AUDIT_FAILED_MESSAGE)), request_id)
    state.metrics.observe(operation, audit.outcome, time.perf_counter() - started)
    response = answer(protocol, status, body, request_id)
    if retry_after:
        response.headers["Retry-After"] = "1"
    if close:
        response.force_close()
    return response


async def no_route(request: web.Request) -> web.Response:
    """The last route: no path matched (404), or the path exists with other methods (405).

    A route instead of a middleware, so that matched calls pay nothing for it.
    """
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource.name == NO_ROUTE:
            continue
        _, methods = await resource.resolve(request)
        allowed |= methods
    path = bounded(request.path)
    if not allowed:
        return json_response(404, error_body(NotFound.code, f"no route {path!r}"))
    response = json_response(
        405,
        error_body(
            InvalidRequest.code,
            f"method {bounded(request.method)} is not allowed on {path!r}; "
            f"allowed: {', '.join(sorted(allowed))}",
        ),
    )
    response.headers["Allow"] = ",".join(sorted(allowed))
    return response

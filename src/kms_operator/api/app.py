"""The aiohttp application of the data-plane API (DESIGN.md section 6), built from its parts.

:func:`create_app` is the seam: it takes the authenticator, authorizer and audit sink, so the
server wires the real ones (TokenReview, SubjectAccessReview, the audit file) and unit tests
and the benchmark pass doubles.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from kms_operator.keys.service import KeyService
from kms_operator.serving.audit import AuditSink

from . import crypto_routes, health, keys_routes, openapi
from .auth import Authenticator, Authorizer
from .calls import NO_ROUTE, STATE, ApiState, ReadinessCheck, no_route
from .metrics import ApiMetrics

#: Largest request body: a 4096-byte plaintext in base64 plus a generous encryption context.
MAX_BODY_BYTES = 64 * 1024


def create_app(
    service: KeyService,
    *,
    authenticator: Authenticator,
    authorizer: Authorizer,
    audit: AuditSink,
    max_body_bytes: int = MAX_BODY_BYTES,
    request_timeout_seconds: float = 10.0,
    readiness_checks: Sequence[ReadinessCheck] = (),
) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes)
    app[STATE] = ApiState(
        service=service,
        authenticator=authenticator,
        authorizer=authorizer,
        audit=audit,
        metrics=ApiMetrics(service.keys),
        max_body_bytes=max_body_bytes,
        request_timeout_seconds=request_timeout_seconds,
        readiness_checks=tuple(readiness_checks),
    )
    crypto_routes.add_routes(app)
    keys_routes.add_routes(app)
    health.add_routes(app)
    openapi.add_routes(app)
    app.router.add_route("*", "/{path:.*}", no_route, name=NO_ROUTE)
    return app

"""The aiohttp application of the listener: health, metrics, then each front end's routes.

:func:`create_app` is the seam: it takes the authenticator, authorizer and audit sink, so the
server wires the real ones (TokenReview, SubjectAccessReview, the audit file) and unit tests
and the benchmark pass doubles; and it takes the front ends (each a function adding its
routes), so the composition root chooses which protocols the listener speaks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiohttp import web

from kms_operator.keys.service import KeyService

from . import health
from .audit import AuditSink
from .auth import Authenticator, Authorizer
from .calls import NO_ROUTE, STATE, ApiState, ReadinessCheck, no_route
from .metrics import ApiMetrics

#: Largest request body: a 4096-byte plaintext in base64 plus a generous encryption context.
MAX_BODY_BYTES = 64 * 1024

#: A front end on the listener: adds its routes to the application.
FrontEnd = Callable[[web.Application], None]


def create_app(
    service: KeyService,
    *,
    front_ends: Sequence[FrontEnd],
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
    health.add_routes(app)
    for add_routes in front_ends:
        add_routes(app)
    # Last: a path no front end serves (routes match in the order they were added).
    app.router.add_route("*", "/{path:.*}", no_route, name=NO_ROUTE)
    return app

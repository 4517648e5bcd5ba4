"""``/healthz``, ``/readyz`` and ``/metrics``: unauthenticated, not audited, no key data.

``/healthz`` answers 200 whenever the server serves; ``/readyz`` only after
:meth:`~kms_operator.serving.server.ApiServer.mark_ready` (store open, cache warm) and while every
readiness check of the other components (for example the deadline scheduler) reports no
problem, so a Service sends no traffic to a replica that would answer slowly or not at all.
A check returns None when healthy, else a short text; ``/readyz`` then answers 503 with the
texts under ``problems``. A check that raises counts as a problem (its type, not its text).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiohttp import web

from kms_operator.serving.audit import bounded

from .calls import STATE, ReadinessCheck
from .metrics import CONTENT_TYPE

log = logging.getLogger(__name__)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def problems(checks: Sequence[ReadinessCheck]) -> list[str]:
    found: list[str] = []
    for check in checks:
        try:
            problem = check()
        except Exception as exc:
            log.warning("readiness check %r failed: %s", check, type(exc).__name__)
            problem = f"a readiness check failed ({type(exc).__name__})"
        if problem is not None:
            found.append(bounded(str(problem)) or "")
    return found


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if not state.ready:
        return web.json_response({"status": "not ready"}, status=503)
    found = problems(state.readiness_checks)
    if found:
        return web.json_response({"status": "not ready", "problems": found}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)

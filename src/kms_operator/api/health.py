"""``/healthz``, ``/readyz`` and ``/metrics``: unauthenticated, not audited, no key data.

``/healthz`` answers 200 whenever the server serves; ``/readyz`` only after
:meth:`~kms_operator.api.server.ApiServer.mark_ready` (store open, cache warm), so a Service
sends no traffic to a replica that would answer slowly or not at all.
"""

from __future__ import annotations

from aiohttp import web

from .calls import STATE
from .metrics import CONTENT_TYPE


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[STATE].ready:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not ready"}, status=503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)

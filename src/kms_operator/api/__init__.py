"""The data-plane API (DESIGN.md section 6): its routes, bodies and OpenAPI document.

:func:`add_routes` is the front end the listener (:mod:`kms_operator.serving.server`) mounts;
authentication, audit and metrics are the listener's, shared with the other front ends.
"""

from __future__ import annotations

from aiohttp import web

from . import crypto_routes, keys_routes, openapi


def add_routes(app: web.Application) -> None:
    crypto_routes.add_routes(app)
    keys_routes.add_routes(app)
    openapi.add_routes(app)

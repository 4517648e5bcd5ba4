"""The native API's wire protocol: Bearer token, JSON answers, ``{"error": {code, message}}``.

:func:`run` runs one native call through :func:`kms_operator.serving.calls.run`, which
authenticates, audits and measures it the same way for every front end on the listener.
"""

from __future__ import annotations

from aiohttp import web

from kms_operator.errors import KmsError
from kms_operator.keys.service import ALIAS_PREFIX
from kms_operator.serving import calls
from kms_operator.serving.auth import bearer_token
from kms_operator.serving.calls import Work, encode_json, error_body

from .bodies import Response


class NativeProtocol:
    """DESIGN.md section 6: the token in ``Authorization: Bearer``, errors by code and status."""

    content_type = "application/json"

    def token(self, request: web.Request) -> str:
        return bearer_token(request.headers.get("Authorization"))

    def answer(self, result: object) -> bytes:
        assert isinstance(result, Response), "a native route answers a declared body"
        return encode_json(result.to_json())

    def error(self, error: KmsError) -> tuple[int, bytes]:
        return error.status, error_body(error.code, error.message)


NATIVE = NativeProtocol()


def key_reference(request: web.Request) -> str:
    """The ``{key}`` of a ``/keys/{key}/…`` route, or ``alias/{alias}`` of an alias route."""
    alias = request.match_info.get("alias")
    if alias is not None:
        return ALIAS_PREFIX + alias
    return request.match_info["key"]


async def run(request: web.Request, operation: str, work: Work) -> web.Response:
    return await calls.run(request, operation, work, NATIVE, namespace=request.match_info.get("ns"))

"""The API's own OpenAPI 3.1 document, served at ``/openapi.json``, generated from what the
server runs on.

* request and response bodies: the declarations of :mod:`.models` (:func:`.bodies.schemas`);
* error codes and HTTP statuses: the classes the server raises and :func:`.calls.run` maps
  (``code`` and ``status``), with what each means to a caller;
* path parameters: the route prefixes and bounds of :mod:`.crypto_routes` and :mod:`.calls`.

Written here: each operation's id, summary and the errors it may answer. Unit tests check that
the paths are the app's routes, and that the examples and the real answers validate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kms_operator import contract
from kms_operator.errors import (
    AccessDenied,
    InvalidCiphertext,
    InvalidRequest,
    KeyDisabled,
    KeyPendingDeletion,
    KeyPendingImport,
    KeyStateError,
    KmsError,
    NotFound,
    Unauthenticated,
)
from kms_operator.keys.service import ALIAS_PREFIX as ALIAS_REFERENCE_PREFIX
from kms_operator.keys.service import MAX_PLAINTEXT
from kms_operator.serving.auth import ReviewsBusy
from kms_operator.serving.calls import MAX_NAMESPACE_CHARS, MAX_REFERENCE_CHARS, RequestTimedOut

from . import bodies, crypto_routes, models
from .bodies import SCHEMA_REF
from .kinds import Schema

#: The resource whose RBAC verbs the API checks.
_CMK_RESOURCE = f"{contract.CMK_PLURAL}.{contract.GROUP}"

#: What each error the API answers with means to a caller (code and status: the class's).
ERRORS: dict[type[KmsError], str] = {
    InvalidRequest: "The body or a parameter is malformed; the message names the field.",
    RequestTimedOut: "The request body did not arrive within the request timeout; the "
    "connection is closed.",
    InvalidCiphertext: "The blob is altered, truncated, from another key, or the encryption "
    "context does not match (one message for all).",
    Unauthenticated: "No Bearer token, a token that is not a ServiceAccount token (JWT), or one "
    "the API server does not accept for the KMS's audience "
    f"({contract.TOKEN_AUDIENCE} unless configured).",
    AccessDenied: f"The caller lacks the RBAC verb on {_CMK_RESOURCE}.",
    NotFound: "No such key (name, key id or alias) in the namespace.",
    KeyDisabled: "The key is disabled (spec.enabled: false).",
    KeyPendingImport: "The key (or the blob's version) has no key material.",
    KeyPendingDeletion: "The key is scheduled for deletion; the use is audited.",
    KeyStateError: "The key is in another state that refuses crypto (Destroyed).",
    KmsError: "Unexpected failure, or the audit line could not be written.",
    ReviewsBusy: "Too many new callers are being checked with the Kubernetes API at once; "
    "retry after the Retry-After header's seconds.",
}

_KEY_STATE_ERRORS = (KeyDisabled, KeyPendingImport, KeyPendingDeletion, KeyStateError)
_AUTH_ERRORS = (Unauthenticated, AccessDenied)


@dataclass(frozen=True, slots=True)
class Operation:
    """One authenticated, audited route: the bodies it reads and answers, the errors it may
    answer besides InternalError and ServiceUnavailable (and 408 when it reads a body)."""

    method: str
    path: str
    operation_id: str
    summary: str
    request: type[bodies.Request] | None
    response: type[bodies.Response]
    errors: tuple[type[KmsError], ...]
    parameters: tuple[Schema, ...] = ()


def _template(route: str) -> str:
    """An aiohttp route as an OpenAPI path: ``{alias:[A-Za-z0-9/_-]+}`` becomes ``{alias}``."""
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route)


def _parameter(name: str, description: str, **schema: object) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", **schema},
        "description": description,
    }


_NAMESPACE = _parameter("ns", "The namespace.", maxLength=MAX_NAMESPACE_CHARS)
_KEY = _parameter("key", "A CMK name or key id.", maxLength=MAX_REFERENCE_CHARS)
_ALIAS = _parameter(
    "alias",
    "The alias without its 'alias/' prefix; it may contain '/'.",
    pattern=f"^{crypto_routes.ALIAS_PATTERN}$",
    maxLength=MAX_REFERENCE_CHARS - len(ALIAS_REFERENCE_PREFIX),
)


def _key_operations(prefix: str, suffix: str, parameter: Schema) -> tuple[Operation, ...]:
    """The routes under ``/keys/{key}`` (or their twins under ``/aliases/{alias}``)."""
    path, parameters = _template(prefix), (_NAMESPACE, parameter)
    return (
        Operation(
            "get",
            path,
            f"describeKey{suffix}",
            "A key's metadata (RBAC verb get on the CMK).",
            None,
            models.KeyMetadata,
            (InvalidRequest, *_AUTH_ERRORS, NotFound),
            parameters,
        ),
        Operation(
            "post",
            f"{path}/encrypt",
            f"encrypt{suffix}",
            f"Encrypt up to {MAX_PLAINTEXT} bytes under the key's current version (verb encrypt).",
            models.EncryptRequest,
            models.EncryptResponse,
            (InvalidRequest, *_AUTH_ERRORS, NotFound, *_KEY_STATE_ERRORS),
            parameters,
        ),
        Operation(
            "post",
            f"{path}/generate-data-key",
            f"generateDataKey{suffix}",
            "A new data key, in plaintext and encrypted (verb generatedatakey).",
            models.GenerateDataKeyRequest,
            models.GenerateDataKeyResponse,
            (InvalidRequest, *_AUTH_ERRORS, NotFound, *_KEY_STATE_ERRORS),
            parameters,
        ),
    )


OPERATIONS: tuple[Operation, ...] = (
    *_key_operations(crypto_routes.KEY_PREFIX, "", _KEY),
    *_key_operations(crypto_routes.ALIAS_PREFIX, "ByAlias", _ALIAS),
    Operation(
        "post",
        "/v1/decrypt",
        "decrypt",
        "Decrypt a blob; the key comes from its header (verb decrypt on that key).",
        models.DecryptRequest,
        models.DecryptResponse,
        (InvalidRequest, InvalidCiphertext, *_AUTH_ERRORS, *_KEY_STATE_ERRORS),
    ),
    Operation(
        "post",
        "/v1/re-encrypt",
        "reEncrypt",
        "Decrypt and encrypt under another key without revealing the plaintext "
        "(decrypt on the source, encrypt on the destination).",
        models.ReEncryptRequest,
        models.ReEncryptResponse,
        (InvalidRequest, InvalidCiphertext, *_AUTH_ERRORS, NotFound, *_KEY_STATE_ERRORS),
    ),
    Operation(
        "post",
        "/v1/random",
        "random",
        "Random bytes (any authenticated caller).",
        models.RandomRequest,
        models.RandomResponse,
        (InvalidRequest, Unauthenticated),
    ),
)


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _errors(*errors: type[KmsError]) -> dict[str, Schema]:
    by_status: dict[int, list[type[KmsError]]] = {}
    for error in errors:
        by_status.setdefault(error.status, []).append(error)
    return {
        str(status): {
            "description": "; ".join(f"{e.code}: {ERRORS[e]}" for e in found),
            "content": _json({"$ref": SCHEMA_REF + "Error"}),
        }
        for status, found in sorted(by_status.items())
    }


def _operation(operation: Operation) -> Schema:
    errors = (*operation.errors, KmsError, ReviewsBusy)
    if operation.request is not None:
        errors = (*errors, RequestTimedOut)
    op: Schema = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "responses": {
            "200": {
                "description": "Success.",
                "content": _json({"$ref": SCHEMA_REF + operation.response.__name__}),
            },
            **_errors(*errors),
        },
    }
    if operation.parameters:
        op["parameters"] = list(operation.parameters)
    if operation.request is not None:
        # Every field is optional in some requests: then an empty body counts as {}.
        optional = "required" not in operation.request.schema()
        op["requestBody"] = {
            "required": not optional,
            "content": _json({"$ref": SCHEMA_REF + operation.request.__name__}),
        }
    return op


def _unsecured(operation_id: str, summary: str, responses: Schema) -> Schema:
    return {"get": {"operationId": operation_id, "summary": summary, "security": [], **responses}}


def _error_schema() -> Schema:
    """The body of every error answer (:func:`.calls.error_body`)."""
    return {
        "type": "object",
        "description": "An error: its code says what went wrong, the message names the field, "
        "state or key.",
        "additionalProperties": False,
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "additionalProperties": False,
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": sorted({e.code for e in ERRORS})},
                    "message": {"type": "string"},
                },
            }
        },
    }


_HEALTH: Schema = {
    "type": "object",
    "description": "Health or readiness, and what keeps a replica from being ready.",
    "properties": {
        "status": {"type": "string"},
        "problems": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["status"],
}


def document() -> Schema:
    health = {"content": _json({"$ref": SCHEMA_REF + "Health"})}
    paths: dict[str, Schema] = {}
    for operation in OPERATIONS:
        paths.setdefault(operation.path, {})[operation.method] = _operation(operation)
    paths["/healthz"] = _unsecured(
        "healthz",
        "200 while the server serves.",
        {"responses": {"200": {"description": "Serving.", **health}}},
    )
    paths["/readyz"] = _unsecured(
        "readyz",
        "200 once the store is open and the cache warm, and while no component reports a problem.",
        {
            "responses": {
                "200": {"description": "Ready.", **health},
                "503": {"description": "Not ready yet, or the problems listed.", **health},
            }
        },
    )
    paths["/metrics"] = _unsecured(
        "metrics",
        "Prometheus metrics (text exposition format).",
        {
            "responses": {
                "200": {
                    "description": "Metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            }
        },
    )
    paths["/openapi.json"] = _unsecured(
        "openapi",
        "This document.",
        {"responses": {"200": {"description": "OpenAPI 3.1.", **_json({"type": "object"})}}},
    )
    used: set[type[bodies.Body]] = {op.request for op in OPERATIONS if op.request is not None}
    used |= {op.response for op in OPERATIONS}
    schemas: dict[str, Any] = {
        **bodies.schemas(*sorted(used, key=lambda body: body.__name__)),
        "Error": _error_schema(),
        "Health": _HEALTH,
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kms-operator data-plane API",
            "version": "v1",
            "description": (
                "Envelope encryption with customer master keys declared as "
                f"{contract.CMK_KIND} resources. Every /keys/{{key}}/ route also exists as "
                "/aliases/{alias}/. Binary fields are standard base64. Every call is "
                "audited; calls whose audit line cannot be written fail with 500."
            ),
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A ServiceAccount token made for the KMS's audience "
                    f"({contract.TOKEN_AUDIENCE} unless configured: a projected token in a "
                    "pod, or TokenRequest), checked by TokenReview, whose reviewed audiences "
                    "must include it; authorization by SubjectAccessReview on "
                    f"{_CMK_RESOURCE}.",
                }
            },
        },
    }


_DOCUMENT = document()


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(_DOCUMENT)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_json, allow_head=False)

"""The API's own OpenAPI 3.1 document, served at ``/openapi.json``.

Built from the same constants as the routes; a unit test checks that every route the app
serves is described here and nothing else.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kms_operator.keys.service import DATA_KEY_SPECS, MAX_PLAINTEXT, RANDOM_BYTES

from .models import MAX_BLOB

Schema = dict[str, Any]

_ERRORS: dict[str, tuple[int, str]] = {
    "InvalidRequest": (400, "The body or a parameter is malformed; the message names the field."),
    "InvalidCiphertext": (
        400,
        "The blob is altered, truncated, from another key, or the "
        "encryption context does not match (one message for all).",
    ),
    "Unauthenticated": (
        401,
        "No Bearer token, a token that is not a ServiceAccount token (JWT), or one the API "
        "server does not accept for the KMS's audience (kms.cmk.dev unless configured).",
    ),
    "AccessDenied": (403, "The caller lacks the RBAC verb on customermasterkeys.kms.cmk.dev."),
    "NotFound": (404, "No such key (name, key id or alias) in the namespace."),
    "KeyDisabled": (409, "The key is disabled (spec.enabled: false)."),
    "KeyPendingImport": (409, "The key (or the blob's version) has no key material."),
    "KeyPendingDeletion": (409, "The key is scheduled for deletion; the use is audited."),
    "KeyInvalidState": (409, "The key is in another state that refuses crypto (Destroyed)."),
    "InternalError": (500, "Unexpected failure, or the audit line could not be written."),
    "ServiceUnavailable": (
        503,
        "Too many new callers are being checked with the Kubernetes API at once; retry after "
        "the Retry-After header's seconds.",
    ),
}

#: The answer to a body that does not arrive within the request timeout (code InvalidRequest).
_TIMEOUT_RESPONSE: Schema = {
    "description": "InvalidRequest: the request body did not arrive within the request "
    "timeout; the connection is closed.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _b64(description: str, max_bytes: int | None = None) -> Schema:
    schema: Schema = {"type": "string", "contentEncoding": "base64", "description": description}
    if max_bytes is not None:
        schema["maxLength"] = 4 * ((max_bytes + 2) // 3)
    return schema


def _object(properties: Schema, required: tuple[str, ...] = ()) -> Schema:
    schema: Schema = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


_KEY_ID = {"type": "string", "format": "uuid", "description": "The key id (status.keyId)."}
_KEY_VERSION = {"type": "integer", "minimum": 1, "description": "The key version used."}
_CONTEXT = {"$ref": "#/components/schemas/EncryptionContext"}
_SEALED = _object(
    {
        "ciphertextBlob": _b64("The ciphertext blob (DESIGN.md section 4)."),
        "keyId": _KEY_ID,
        "keyVersion": _KEY_VERSION,
    },
    ("ciphertextBlob", "keyId", "keyVersion"),
)
_NUMBER_OF_BYTES = {"type": "integer", "minimum": RANDOM_BYTES[0], "maximum": RANDOM_BYTES[1]}
_TIME = {"type": ["string", "null"], "format": "date-time"}

SCHEMAS: dict[str, Schema] = {
    "Error": _object(
        {
            "error": _object(
                {
                    "code": {"type": "string", "enum": sorted(_ERRORS)},
                    "message": {"type": "string"},
                },
                ("code", "message"),
            )
        },
        ("error",),
    ),
    "EncryptionContext": {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "Authenticated, not encrypted: decrypt needs the same map.",
    },
    "EncryptRequest": _object(
        {
            "plaintext": _b64(f"At most {MAX_PLAINTEXT} bytes.", MAX_PLAINTEXT),
            "encryptionContext": _CONTEXT,
        },
        ("plaintext",),
    ),
    "EncryptResponse": _SEALED,
    "GenerateDataKeyRequest": _object(
        {
            "keySpec": {"type": "string", "enum": list(DATA_KEY_SPECS), "default": "AES_256"},
            "numberOfBytes": {**_NUMBER_OF_BYTES, "description": "Instead of keySpec."},
            "encryptionContext": _CONTEXT,
            "withoutPlaintext": {"type": "boolean", "default": False},
        }
    ),
    "GenerateDataKeyResponse": _object(
        {
            "ciphertextBlob": _b64("The data key, encrypted under the CMK."),
            "plaintext": _b64("The data key; absent when withoutPlaintext is true."),
            "keyId": _KEY_ID,
            "keyVersion": _KEY_VERSION,
        },
        ("ciphertextBlob", "keyId", "keyVersion"),
    ),
    "DecryptRequest": _object(
        {"ciphertextBlob": _b64("A blob from encrypt.", MAX_BLOB), "encryptionContext": _CONTEXT},
        ("ciphertextBlob",),
    ),
    "DecryptResponse": _object(
        {"plaintext": _b64("The plaintext."), "keyId": _KEY_ID, "keyVersion": _KEY_VERSION},
        ("plaintext", "keyId", "keyVersion"),
    ),
    "ReEncryptRequest": _object(
        {
            "ciphertextBlob": _b64("A blob from encrypt.", MAX_BLOB),
            "sourceEncryptionContext": _CONTEXT,
            "destination": _object(
                {
                    "namespace": {"type": "string"},
                    "key": {"type": "string", "description": "Name, key id or alias/<name>."},
                },
                ("namespace", "key"),
            ),
            "destinationEncryptionContext": _CONTEXT,
        },
        ("ciphertextBlob", "destination"),
    ),
    "ReEncryptResponse": _object(
        {
            "ciphertextBlob": _b64("The blob under the destination key."),
            "keyId": _KEY_ID,
            "keyVersion": _KEY_VERSION,
            "sourceKeyId": _KEY_ID,
            "sourceKeyVersion": _KEY_VERSION,
        },
        ("ciphertextBlob", "keyId", "keyVersion"),
    ),
    "RandomRequest": _object({"numberOfBytes": _NUMBER_OF_BYTES}, ("numberOfBytes",)),
    "RandomResponse": _object({"plaintext": _b64("Random bytes.")}, ("plaintext",)),
    "KeyMetadata": {
        "type": "object",
        "description": "What the CMK's status publishes; never key material.",
        "properties": {
            "keyId": _KEY_ID,
            "namespace": {"type": "string"},
            "name": {"type": "string"},
            "state": {
                "type": "string",
                "enum": [
                    "Creating",
                    "Enabled",
                    "Disabled",
                    "PendingImport",
                    "PendingDeletion",
                    "Destroyed",
                ],
            },
            "origin": {"type": "string", "enum": ["KMS", "EXTERNAL"]},
            "keySpec": {"type": "string"},
            "keyUsage": {"type": "string"},
            "description": {"type": "string"},
            "enabled": {"type": "boolean"},
            "aliases": {"type": "array", "items": {"type": "string"}},
            "default": {"type": "boolean"},
            "createdAt": _TIME,
            "currentVersion": {"type": "integer"},
            "versions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "version": {"type": "integer"},
                        "createdAt": _TIME,
                        "state": {"type": "string"},
                        "importedAt": _TIME,
                        "expiresAt": _TIME,
                    },
                },
            },
            "rotation": {
                "type": "object",
                "properties": {
                    "periodDays": {"type": ["integer", "null"]},
                    "lastRotatedAt": _TIME,
                    "nextRotationAt": _TIME,
                },
            },
            "deletionDate": _TIME,
        },
    },
    "Health": {"type": "object", "properties": {"status": {"type": "string"}}},
}


def _errors(*codes: str) -> dict[str, Schema]:
    by_status: dict[int, list[str]] = {}
    for code in (*codes, "InternalError"):
        by_status.setdefault(_ERRORS[code][0], []).append(code)
    return {
        str(status): {
            "description": "; ".join(f"{c}: {_ERRORS[c][1]}" for c in names),
            "content": {"application/json": {"schema": _ref("Error")}},
        }
        for status, names in sorted(by_status.items())
    }


_NS = {
    "name": "ns",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The namespace.",
}
_KEY = {
    "name": "key",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "A CMK name or key id.",
}
_ALIAS = {
    "name": "alias",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The alias without its 'alias/' prefix; it may contain '/'.",
}
_KEY_STATE_ERRORS = ("KeyDisabled", "KeyPendingImport", "KeyPendingDeletion", "KeyInvalidState")
_AUTH_ERRORS = ("Unauthenticated", "AccessDenied")


def _operation(
    operation_id: str,
    summary: str,
    request: str | None,
    response: str,
    errors: tuple[str, ...],
    *,
    parameters: list[Schema] | None = None,
    secured: bool = True,
) -> Schema:
    op: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "responses": {
            "200": {
                "description": "Success.",
                "content": {"application/json": {"schema": _ref(response)}},
            },
            **_errors(*errors),
        },
    }
    if parameters:
        op["parameters"] = parameters
    if request is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(request)}},
        }
        op["responses"]["408"] = _TIMEOUT_RESPONSE
    if secured:
        op["responses"].update(_errors("ServiceUnavailable"))
    if not secured:
        op["security"] = []
    return op


def _key_routes() -> dict[str, Schema]:
    paths: dict[str, Schema] = {}
    for kind, param in (("keys/{key}", _KEY), ("aliases/{alias}", _ALIAS)):
        suffix = "ByAlias" if param is _ALIAS else ""
        base = f"/v1/namespaces/{{ns}}/{kind}"
        params = [_NS, param]
        paths[base] = {
            "get": _operation(
                f"describeKey{suffix}",
                "A key's metadata (RBAC verb get on the CMK).",
                None,
                "KeyMetadata",
                ("InvalidRequest", *_AUTH_ERRORS, "NotFound"),
                parameters=params,
            )
        }
        paths[f"{base}/encrypt"] = {
            "post": _operation(
                f"encrypt{suffix}",
                "Encrypt up to 4096 bytes under the key's current version (verb encrypt).",
                "EncryptRequest",
                "EncryptResponse",
                ("InvalidRequest", *_AUTH_ERRORS, "NotFound", *_KEY_STATE_ERRORS),
                parameters=params,
            )
        }
        paths[f"{base}/generate-data-key"] = {
            "post": _operation(
                f"generateDataKey{suffix}",
                "A new data key, in plaintext and encrypted (verb generatedatakey).",
                "GenerateDataKeyRequest",
                "GenerateDataKeyResponse",
                ("InvalidRequest", *_AUTH_ERRORS, "NotFound", *_KEY_STATE_ERRORS),
                parameters=params,
            )
        }
    return paths


def document() -> Schema:
    health = {"application/json": {"schema": _ref("Health")}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kms-operator data-plane API",
            "version": "v1",
            "description": (
                "Envelope encryption with customer master keys declared as "
                "CustomerMasterKey resources. Every /keys/{key}/ route also exists as "
                "/aliases/{alias}/. Binary fields are standard base64. Every call is "
                "audited; calls whose audit line cannot be written fail with 500."
            ),
        },
        "security": [{"bearer": []}],
        "paths": {
            **_key_routes(),
            "/v1/decrypt": {
                "post": _operation(
                    "decrypt",
                    "Decrypt a blob; the key comes from its header (verb decrypt on that key).",
                    "DecryptRequest",
                    "DecryptResponse",
                    ("InvalidRequest", "InvalidCiphertext", *_AUTH_ERRORS, *_KEY_STATE_ERRORS),
                )
            },
            "/v1/re-encrypt": {
                "post": _operation(
                    "reEncrypt",
                    "Decrypt and encrypt under another key without revealing the plaintext "
                    "(decrypt on the source, encrypt on the destination).",
                    "ReEncryptRequest",
                    "ReEncryptResponse",
                    (
                        "InvalidRequest",
                        "InvalidCiphertext",
                        *_AUTH_ERRORS,
                        "NotFound",
                        *_KEY_STATE_ERRORS,
                    ),
                )
            },
            "/v1/random": {
                "post": _operation(
                    "random",
                    "Random bytes (any authenticated caller).",
                    "RandomRequest",
                    "RandomResponse",
                    ("InvalidRequest", "Unauthenticated"),
                )
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "200 while the server serves.",
                    "security": [],
                    "responses": {"200": {"description": "Serving.", "content": health}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "200 once the store is open and the cache warm.",
                    "security": [],
                    "responses": {
                        "200": {"description": "Ready.", "content": health},
                        "503": {"description": "Not ready yet.", "content": health},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (text exposition format).",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Metrics.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A ServiceAccount token made for the KMS's audience "
                    "(kms.cmk.dev unless configured: a projected token in a pod, or "
                    "TokenRequest), checked by TokenReview, whose reviewed audiences must "
                    "include it; authorization by SubjectAccessReview on "
                    "customermasterkeys.kms.cmk.dev.",
                }
            },
        },
    }


_DOCUMENT = document()


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(_DOCUMENT)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_json, allow_head=False)

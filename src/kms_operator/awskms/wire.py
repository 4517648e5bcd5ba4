"""AWS JSON 1.1, the wire of AWS KMS: where the token travels, how bodies and errors look.

* The caller's ServiceAccount token is the AWS *session token* (``X-Amz-Security-Token``, what
  every SDK sends from ``AWS_SESSION_TOKEN``) or a ``Bearer`` header. The SigV4 signature in
  ``Authorization`` is not checked: its secret key would be one more shared secret to hand out
  and rotate, while the token is already a short-lived credential the API server verifies
  (TokenReview). Access key id and secret key may therefore be anything.
* Bodies are JSON objects with AWS's member names; blobs are base64, timestamps epoch seconds.
  Members a request does not use (``GrantTokens``, ``DryRun`` false, …) are ignored, as AWS
  does, so SDKs that send them work unchanged.
* A refusal is HTTP 400 (500 for a fault of ours) with ``{"__type": <shape>, "message": …}``;
  the shape names are AWS's, so the SDKs raise their usual exception classes
  (``KMS.Client.exceptions.NotFoundException``, …).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from aiohttp import web

from kms_operator.errors import (
    AccessDenied,
    AliasConflict,
    AlreadyExists,
    Conflict,
    DefaultKeyProtected,
    ExpiredImportToken,
    IncorrectKeyMaterial,
    InvalidCiphertext,
    InvalidImportToken,
    InvalidRequest,
    KeyBoundElsewhere,
    KeyDisabled,
    KeyStateError,
    KmsError,
    NotFound,
    Unauthenticated,
)
from kms_operator.serving.auth import ReviewsBusy, ReviewUnavailable, bearer_token
from kms_operator.serving.calls import RequestTimedOut, encode_json

CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_HEADER = "X-Amz-Target"
TARGET_PREFIX = "TrentService."
SESSION_TOKEN_HEADER = "X-Amz-Security-Token"  # noqa: S105 - a header name

UNAUTHENTICATED_MESSAGE = (
    "no token: send the ServiceAccount token made for the KMS's audience as the AWS session "
    "token (AWS_SESSION_TOKEN, header X-Amz-Security-Token) or as a Bearer header"
)


class AwsError(KmsError):
    """A refusal that exists only in the AWS protocol; ``shape`` is its ``__type``."""

    code: ClassVar[str] = "InvalidRequest"
    status: ClassVar[int] = 400
    shape: ClassVar[str] = "ValidationException"


class UnsupportedOperation(AwsError):
    shape = "UnsupportedOperationException"


class IncorrectKey(AwsError):
    """Decrypt's ``KeyId`` (or ReEncrypt's ``SourceKeyId``) is not the key of the blob."""

    shape = "IncorrectKeyException"


class InvalidKeyUsage(AwsError):
    shape = "InvalidKeyUsageException"


class InvalidMarker(AwsError):
    shape = "InvalidMarkerException"


class DependencyTimeout(AwsError):
    """The operator did not apply a change to a custom resource in time (it may still)."""

    code = "InternalError"
    status = 500
    shape = "DependencyTimeoutException"


#: Our errors by class (the most specific first) → AWS's shape names.
_SHAPES: tuple[tuple[type[KmsError], str], ...] = (
    (InvalidCiphertext, "InvalidCiphertextException"),
    (Unauthenticated, "UnrecognizedClientException"),
    (AccessDenied, "AccessDeniedException"),
    (NotFound, "NotFoundException"),
    (KeyDisabled, "DisabledException"),
    (DefaultKeyProtected, "UnsupportedOperationException"),
    (KeyBoundElsewhere, "KMSInvalidStateException"),
    (KeyStateError, "KMSInvalidStateException"),
    (AliasConflict, "AlreadyExistsException"),
    (AlreadyExists, "AlreadyExistsException"),
    (Conflict, "ConflictException"),
    (InvalidImportToken, "InvalidImportTokenException"),
    (ExpiredImportToken, "ExpiredImportTokenException"),
    (IncorrectKeyMaterial, "IncorrectKeyMaterialException"),
    (ReviewsBusy, "ThrottlingException"),
    (ReviewUnavailable, "DependencyTimeoutException"),
    (InvalidRequest, "ValidationException"),  # RequestTimedOut too
)


def shape_of(error: KmsError) -> str:
    if isinstance(error, AwsError):
        return error.shape
    for kind, shape in _SHAPES:
        if isinstance(error, kind):
            return shape
    return "KMSInternalException"


class AwsProtocol:
    """:class:`kms_operator.serving.calls.WireProtocol` of AWS JSON 1.1."""

    content_type = CONTENT_TYPE

    def token(self, request: web.Request) -> str:
        token = request.headers.get(SESSION_TOKEN_HEADER)
        if token:
            return token
        authorization = request.headers.get("Authorization")
        if authorization is None or not authorization.startswith("Bearer "):
            raise Unauthenticated(UNAUTHENTICATED_MESSAGE)
        return bearer_token(authorization)

    def answer(self, result: object) -> bytes:
        return encode_json(result)

    def error(self, error: KmsError) -> tuple[int, bytes]:
        # AWS answers every refusal with 400 and its own faults with 500; the SDKs retry the
        # 500s and the throttling shape.
        status = 500 if error.status >= 500 and not isinstance(error, ReviewsBusy) else 400
        if isinstance(error, RequestTimedOut):
            status = 408
        return status, encode_json({"__type": shape_of(error), "message": error.message})


AWS = AwsProtocol()


def epoch(moment: datetime | None) -> float | None:
    """AWS's timestamps: seconds since the epoch (a JSON number)."""
    return None if moment is None else moment.timestamp()


class Fields:
    """The members of one request body, read strictly: a wrong type or size names the member.

    ``null`` counts as absent. Members nobody asks for are ignored (see the module's doc).
    """

    __slots__ = ("_body",)

    def __init__(self, body: Mapping[str, Any]) -> None:
        self._body = body

    @classmethod
    def parse(cls, raw: bytes) -> Fields:
        if not raw.strip():
            return cls({})
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise InvalidRequest("the request body is not valid JSON", field="body") from None
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object", field="body")
        return cls(body)

    def _get(self, name: str, required: bool) -> Any:
        value = self._body.get(name)
        if value is None and required:
            raise InvalidRequest(f"{name} is required", field=name)
        return value

    def string(self, name: str, *, required: bool = False, max_chars: int = 2048) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise InvalidRequest(f"{name} must be a string", field=name)
        if not 1 <= len(value) <= max_chars:
            raise InvalidRequest(f"{name} must have 1 to {max_chars} characters", field=name)
        return value

    def required_string(self, name: str, *, max_chars: int = 2048) -> str:
        value = self.string(name, required=True, max_chars=max_chars)
        assert value is not None
        return value

    def choice(self, name: str, allowed: tuple[str, ...], *, default: str | None = None) -> str:
        value = self.string(name, required=default is None) or default
        assert value is not None
        if value not in allowed:
            raise InvalidRequest(
                f"{name} {value!r} is not supported here; supported: {', '.join(allowed)}",
                field=name,
            )
        return value

    def blob(self, name: str, *, max_bytes: int, required: bool = True) -> bytes | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise InvalidRequest(f"{name} must be a base64 string", field=name)
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{name} is not valid base64", field=name) from None
        if not 1 <= len(data) <= max_bytes:
            raise InvalidRequest(f"{name} must hold 1 to {max_bytes} bytes", field=name)
        return data

    def required_blob(self, name: str, *, max_bytes: int) -> bytes:
        value = self.blob(name, max_bytes=max_bytes)
        assert value is not None
        return value

    def integer(self, name: str, low: int, high: int) -> int | None:
        value = self._get(name, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"{name} must be an integer", field=name)
        if not low <= value <= high:
            raise InvalidRequest(f"{name} must be between {low} and {high}", field=name)
        return value

    def boolean(self, name: str) -> bool | None:
        value = self._get(name, False)
        if value is not None and not isinstance(value, bool):
            raise InvalidRequest(f"{name} must be true or false", field=name)
        return value

    def timestamp(self, name: str) -> datetime | None:
        """A timestamp member: epoch seconds (what the SDKs send), as aware UTC."""
        value = self._get(name, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(
                f"{name} must be a timestamp (seconds since the epoch)", field=name
            )
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidRequest(f"{name} is not a representable timestamp", field=name) from None

    def objects(self, name: str, *, max_items: int) -> list[Mapping[str, Any]]:
        """A list of JSON objects (``Tags``); absent is empty."""
        value = self._get(name, False)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise InvalidRequest(f"{name} must be a list of objects", field=name)
        if len(value) > max_items:
            raise InvalidRequest(f"{name} has more than {max_items} items", field=name)
        return value

    def context(self, name: str) -> dict[str, str] | None:
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise InvalidRequest(f"{name} must map strings to strings", field=name)
        return value

    def refuse_dry_run(self) -> None:
        if self.boolean("DryRun"):
            raise UnsupportedOperation("DryRun is not supported by this KMS")

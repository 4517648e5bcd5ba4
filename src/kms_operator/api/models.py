"""Typed request bodies: JSON in, frozen dataclasses out, or an ``InvalidRequest`` naming the field.

Parsing is strict: a body that is not a JSON object, a field of the wrong type, a binary field
that is not standard base64, and a field the route does not know are all refused, with the
field's name (``destination.key``, ``encryptionContext.tenant``) in the message and in
``InvalidRequest.field``. ``null`` counts as absent. An empty body counts as ``{}``. A body
nested deeper than :data:`MAX_JSON_DEPTH` levels is refused before it is parsed (no request
has more than three levels), so deep nesting costs neither recursion nor a traceback.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from kms_operator.crypto.blob import HEADER_SIZE, TAG_SIZE
from kms_operator.errors import InvalidRequest
from kms_operator.keys.service import DATA_KEY_SPECS, MAX_PLAINTEXT, RANDOM_BYTES

#: Largest blob the service can make, for an early check of the body.
MAX_BLOB = HEADER_SIZE + MAX_PLAINTEXT + TAG_SIZE
MAX_CONTEXT_PAIRS = 64
#: Deepest nesting of arrays and objects accepted in a body.
MAX_JSON_DEPTH = 16

#: A JSON string (an unterminated one runs to the end: no backtracking, linear time).
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
#: Every byte but brackets and braces, for ``bytes.translate(None, ...)``.
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")

EncryptionContext = dict[str, str]


@dataclass(frozen=True, slots=True)
class EncryptRequest:
    plaintext: bytes = field(repr=False)
    encryption_context: EncryptionContext | None = None


@dataclass(frozen=True, slots=True)
class GenerateDataKeyRequest:
    key_spec: str | None = None
    number_of_bytes: int | None = None
    encryption_context: EncryptionContext | None = None
    without_plaintext: bool = False


@dataclass(frozen=True, slots=True)
class DecryptRequest:
    ciphertext_blob: bytes = field(repr=False)
    encryption_context: EncryptionContext | None = None


@dataclass(frozen=True, slots=True)
class Destination:
    namespace: str
    key: str


@dataclass(frozen=True, slots=True)
class ReEncryptRequest:
    ciphertext_blob: bytes = field(repr=False)
    destination: Destination
    source_encryption_context: EncryptionContext | None = None
    destination_encryption_context: EncryptionContext | None = None


@dataclass(frozen=True, slots=True)
class RandomRequest:
    number_of_bytes: int


def nesting_exceeds(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text ``raw`` nests arrays and objects deeper than ``limit`` levels
    (or its brackets do not pair up, so that it is no JSON at all).

    Free for bodies with at most ``limit`` opening brackets (every real request); otherwise
    strings are dropped, then the innermost pairs peeled off one level per round, in C-speed
    passes over at most the body's length.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        inner = brackets.replace(b"[]", b"x").replace(b"{}", b"x").replace(b"x", b"")
        if len(inner) == len(brackets):
            return True  # nothing pairs up: not JSON
        brackets = inner
    return bool(brackets)


def _load(raw: bytes) -> dict[str, object]:
    if nesting_exceeds(raw):
        raise InvalidRequest(
            f"the request body is not valid JSON nested at most {MAX_JSON_DEPTH} levels deep",
            field="body",
        )
    try:
        text = raw.decode("utf-8")
        if not text or text.isspace():
            return {}
        value = json.loads(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InvalidRequest("the request body is not valid JSON", field="body") from None
    if not isinstance(value, dict):
        raise InvalidRequest("the request body must be a JSON object", field="body")
    return value


def _only(body: Mapping[str, object], known: tuple[str, ...], prefix: str = "") -> None:
    for name in body:
        if name not in known:
            path = prefix + name
            raise InvalidRequest(
                f"unknown field {path!r}; expected {', '.join(prefix + k for k in known)}",
                field=path,
            )


def _required(body: Mapping[str, object], name: str, path: str) -> object:
    value = body.get(name)
    if value is None:
        raise InvalidRequest(f"field {path!r} is required", field=path)
    return value


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"field {path!r} must be a string", field=path)
    return value


def _int(value: object, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"field {path!r} must be an integer", field=path)
    if not low <= value <= high:
        raise InvalidRequest(f"field {path!r} must be between {low} and {high}", field=path)
    return value


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"field {path!r} must be true or false", field=path)
    return value


def _binary(value: object, path: str, max_bytes: int) -> bytes:
    text = _string(value, path)
    if len(text) > 4 * ((max_bytes + 2) // 3):
        raise InvalidRequest(f"field {path!r} is longer than {max_bytes} bytes", field=path)
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"field {path!r} is not valid standard base64", field=path) from None
    if len(decoded) > max_bytes:
        raise InvalidRequest(
            f"field {path!r} is {len(decoded)} bytes; at most {max_bytes} are accepted",
            field=path,
        )
    return decoded


def _context(value: object, path: str) -> EncryptionContext | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"field {path!r} must be an object of string keys and string values", field=path
        )
    if len(value) > MAX_CONTEXT_PAIRS:
        raise InvalidRequest(f"field {path!r} has more than {MAX_CONTEXT_PAIRS} pairs", field=path)
    for key, item in value.items():
        if not isinstance(item, str):
            raise InvalidRequest(f"field {path}.{key} must be a string", field=f"{path}.{key}")
    return dict(value)


def parse_encrypt(raw: bytes) -> EncryptRequest:
    body = _load(raw)
    _only(body, ("plaintext", "encryptionContext"))
    return EncryptRequest(
        _binary(_required(body, "plaintext", "plaintext"), "plaintext", MAX_PLAINTEXT),
        _context(body.get("encryptionContext"), "encryptionContext"),
    )


def parse_generate_data_key(raw: bytes) -> GenerateDataKeyRequest:
    body = _load(raw)
    _only(body, ("keySpec", "numberOfBytes", "encryptionContext", "withoutPlaintext"))
    key_spec = body.get("keySpec")
    number = body.get("numberOfBytes")
    if key_spec is not None and number is not None:
        raise InvalidRequest("give keySpec or numberOfBytes, not both", field="numberOfBytes")
    spec: str | None = None
    if key_spec is not None:
        spec = _string(key_spec, "keySpec")
        if spec not in DATA_KEY_SPECS:
            raise InvalidRequest(
                f"field 'keySpec' must be one of {', '.join(DATA_KEY_SPECS)}", field="keySpec"
            )
    without = body.get("withoutPlaintext")
    return GenerateDataKeyRequest(
        key_spec=spec,
        number_of_bytes=None if number is None else _int(number, "numberOfBytes", *RANDOM_BYTES),
        encryption_context=_context(body.get("encryptionContext"), "encryptionContext"),
        without_plaintext=False if without is None else _bool(without, "withoutPlaintext"),
    )


def parse_decrypt(raw: bytes) -> DecryptRequest:
    body = _load(raw)
    _only(body, ("ciphertextBlob", "encryptionContext"))
    return DecryptRequest(
        _binary(_required(body, "ciphertextBlob", "ciphertextBlob"), "ciphertextBlob", MAX_BLOB),
        _context(body.get("encryptionContext"), "encryptionContext"),
    )


def parse_re_encrypt(raw: bytes) -> ReEncryptRequest:
    body = _load(raw)
    _only(
        body,
        (
            "ciphertextBlob",
            "sourceEncryptionContext",
            "destination",
            "destinationEncryptionContext",
        ),
    )
    blob = _binary(_required(body, "ciphertextBlob", "ciphertextBlob"), "ciphertextBlob", MAX_BLOB)
    destination = _required(body, "destination", "destination")
    if not isinstance(destination, dict):
        raise InvalidRequest(
            "field 'destination' must be an object {namespace, key}", field="destination"
        )
    _only(destination, ("namespace", "key"), prefix="destination.")
    namespace = _string(
        _required(destination, "namespace", "destination.namespace"), "destination.namespace"
    )
    key = _string(_required(destination, "key", "destination.key"), "destination.key")
    for path, value in (("destination.namespace", namespace), ("destination.key", key)):
        if not value:
            raise InvalidRequest(f"field {path!r} must not be empty", field=path)
    return ReEncryptRequest(
        blob,
        Destination(namespace, key),
        _context(body.get("sourceEncryptionContext"), "sourceEncryptionContext"),
        _context(body.get("destinationEncryptionContext"), "destinationEncryptionContext"),
    )


def parse_random(raw: bytes) -> RandomRequest:
    body = _load(raw)
    _only(body, ("numberOfBytes",))
    return RandomRequest(
        _int(_required(body, "numberOfBytes", "numberOfBytes"), "numberOfBytes", *RANDOM_BYTES)
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")

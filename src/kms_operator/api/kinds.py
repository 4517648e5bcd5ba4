"""The kinds of value a body's field holds (:mod:`.bodies`): how each is read from a request,
written in an answer and described in JSON Schema.

A kind's schema refuses what its reader refuses, except where JSON Schema cannot say it: a
binary field's exact byte bound (the text may be up to two bytes longer), an integer written
as ``16.0`` (JSON Schema counts it as an integer, the reader does not).
"""

from __future__ import annotations

import abc
import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kms_operator.errors import InvalidRequest

Schema = dict[str, Any]
#: How a value goes into an answer.
Writer = Callable[[Any], object]

MAX_CONTEXT_PAIRS = 64
#: What ``base64.b64decode(text, validate=True)`` accepts, for the schema.
_BASE64_PATTERN = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


class Kind(abc.ABC):
    """How one JSON value is read from a request, written in an answer and described."""

    __slots__ = ()

    @abc.abstractmethod
    def read(self, value: object, path: str) -> object: ...

    @abc.abstractmethod
    def schema(self) -> Schema: ...

    def writer(self) -> Writer | None:
        """How a value goes into an answer; None: as it is."""
        return None


@dataclass(frozen=True, slots=True)
class Binary(Kind):
    """Bytes, as standard base64 text; at most ``max_bytes`` of them in a request."""

    max_bytes: int | None = None
    description: str = ""

    def read(self, value: object, path: str) -> bytes:
        text = _string(value, path)
        if self.max_bytes is None:
            return _decode(text, path)
        if len(text) > _base64_chars(self.max_bytes):
            raise InvalidRequest(
                f"field {path!r} is longer than {self.max_bytes} bytes", field=path
            )
        decoded = _decode(text, path)
        if len(decoded) > self.max_bytes:
            raise InvalidRequest(
                f"field {path!r} is {len(decoded)} bytes; at most {self.max_bytes} are accepted",
                field=path,
            )
        return decoded

    def writer(self) -> Writer:
        return b64

    def schema(self) -> Schema:
        schema = _described(
            {"type": "string", "contentEncoding": "base64", "pattern": _BASE64_PATTERN},
            self.description,
        )
        if self.max_bytes is not None:
            schema["maxLength"] = _base64_chars(self.max_bytes)
        return schema


@dataclass(frozen=True, slots=True)
class Text(Kind):
    """A string: one of ``choices`` when given, not empty when ``non_empty``."""

    description: str = ""
    choices: tuple[str, ...] = ()
    non_empty: bool = False
    format: str | None = None

    def read(self, value: object, path: str) -> str:
        text = _string(value, path)
        if self.choices and text not in self.choices:
            raise InvalidRequest(
                f"field {path!r} must be one of {', '.join(self.choices)}", field=path
            )
        if self.non_empty and not text:
            raise InvalidRequest(f"field {path!r} must not be empty", field=path)
        return text

    def schema(self) -> Schema:
        schema: Schema = {"type": "string"}
        if self.choices:
            schema["enum"] = list(self.choices)
        if self.non_empty:
            schema["minLength"] = 1
        if self.format is not None:
            schema["format"] = self.format
        return _described(schema, self.description)


@dataclass(frozen=True, slots=True)
class Integer(Kind):
    """An integer (never a boolean), within ``low`` and ``high`` when given."""

    low: int | None = None
    high: int | None = None
    description: str = ""

    def read(self, value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"field {path!r} must be an integer", field=path)
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            raise InvalidRequest(
                f"field {path!r} must be between {self.low} and {self.high}", field=path
            )
        return value

    def schema(self) -> Schema:
        schema: Schema = {"type": "integer"}
        if self.low is not None:
            schema["minimum"] = self.low
        if self.high is not None:
            schema["maximum"] = self.high
        return _described(schema, self.description)


@dataclass(frozen=True, slots=True)
class Flag(Kind):
    """``true`` or ``false``."""

    description: str = ""

    def read(self, value: object, path: str) -> bool:
        if not isinstance(value, bool):
            raise InvalidRequest(f"field {path!r} must be true or false", field=path)
        return value

    def schema(self) -> Schema:
        return _described({"type": "boolean"}, self.description)


@dataclass(frozen=True, slots=True)
class Context(Kind):
    """An encryption context: string keys to string values, at most 64 pairs."""

    description: str = ""

    def read(self, value: object, path: str) -> dict[str, str]:
        if not isinstance(value, dict):
            raise InvalidRequest(
                f"field {path!r} must be an object of string keys and string values", field=path
            )
        if len(value) > MAX_CONTEXT_PAIRS:
            raise InvalidRequest(
                f"field {path!r} has more than {MAX_CONTEXT_PAIRS} pairs", field=path
            )
        for key, item in value.items():
            if not isinstance(item, str):
                raise InvalidRequest(f"field {path}.{key} must be a string", field=f"{path}.{key}")
        return dict(value)

    def schema(self) -> Schema:
        return _described(
            {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "maxProperties": MAX_CONTEXT_PAIRS,
            },
            self.description,
        )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _decode(text: str, path: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"field {path!r} is not valid standard base64", field=path) from None


def _base64_chars(max_bytes: int) -> int:
    return 4 * ((max_bytes + 2) // 3)


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"field {path!r} must be a string", field=path)
    return value


def _described(schema: Schema, description: str) -> Schema:
    if description:
        schema["description"] = description
    return schema

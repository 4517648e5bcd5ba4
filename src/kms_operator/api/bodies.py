"""How the API's JSON bodies are declared: once, so reading and describing cannot disagree.

A body is a dataclass subclassing :class:`Request` (frozen) or :class:`Response`; each field's
kind is the ``Annotated`` metadata of its type (``Annotated[bytes, Binary(4096)]``), a nested
body is an object, a ``tuple`` of values an array. The same declaration

* reads a request (:meth:`Request.parse`): strictly, with the field's name (``destination.key``,
  ``encryptionContext.tenant``) in the message and in ``InvalidRequest.field``;
* writes an answer (:meth:`Response.to_json`): bytes as base64, an optional field's ``None``
  left out, a required one's written as ``null``;
* describes both in JSON Schema for the OpenAPI document (:func:`schemas`): the docstring is
  the description, ``EXAMPLES`` the examples.

Reading rules: a body that is not a JSON object, a field of the wrong type, a binary field that
is not standard base64 and a field the body does not declare are all refused; ``null`` counts
as absent; an empty body counts as ``{}``; a field without a default is required. A body nested
deeper than :data:`MAX_JSON_DEPTH` levels is refused before it is parsed (no request has more
than three levels), so deep nesting costs neither recursion nor a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Self, Union

from kms_operator.errors import InvalidRequest

from .kinds import Kind, Schema, Writer

#: Deepest nesting of arrays and objects accepted in a body.
MAX_JSON_DEPTH = 16
#: Where a nested body's schema is referenced in the OpenAPI document.
SCHEMA_REF = "#/components/schemas/"

#: A JSON string (an unterminated one runs to the end: no backtracking, linear time).
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
#: Every byte but brackets and braces, for ``bytes.translate(None, ...)``.
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")


# -- fields: a dataclass field, its JSON name and its kind ----------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    attribute: str
    name: str  # in JSON: camelCase of the attribute
    required: bool  # no default
    nullable: bool  # the type admits None
    kind: Kind | None  # None: a nested body, or an array (``items``)
    body: type[Body] | None = None
    items: _Field | None = None

    def schema(self) -> Schema:
        if self.items is not None:
            schema: Schema = {"type": "array", "items": self.items.schema()}
        elif self.body is not None:
            schema = {"$ref": SCHEMA_REF + self.body.__name__}
        else:
            assert self.kind is not None
            schema = self.kind.schema()
        if not self.nullable:
            return schema
        if "type" not in schema:
            return {"anyOf": [schema, {"type": "null"}]}
        schema = {**schema, "type": [schema["type"], "null"]}
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
        return schema


def _camel(attribute: str) -> str:
    head, *rest = attribute.split("_")
    return head + "".join(word.capitalize() for word in rest)


def _field_of(attribute: str, hint: Any, required: bool) -> _Field:
    """The field of ``hint``: ``Annotated[T, kind]`` or ``Annotated[T | None, kind]`` or
    ``Annotated[T, kind] | None``, a body, or a tuple of either."""
    kind: Kind | None = None
    nullable = False
    for _ in range(2):  # Annotated and None in either order
        if typing.get_origin(hint) is Annotated:
            hint, *extras = typing.get_args(hint)
            kind = next((extra for extra in extras if isinstance(extra, Kind)), kind)
        elif typing.get_origin(hint) in (Union, types.UnionType):
            (hint,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
            nullable = True
    name = _camel(attribute)
    if kind is not None:
        return _Field(attribute, name, required, nullable, kind)
    if isinstance(hint, type) and issubclass(hint, Body):
        return _Field(attribute, name, required, nullable, None, body=hint)
    if typing.get_origin(hint) is tuple:
        item, _ = typing.get_args(hint)
        return _Field(
            attribute, name, required, nullable, None, items=_field_of(attribute, item, True)
        )
    raise TypeError(f"field {attribute!r} has no kind: annotate it with one")


_FIELDS: dict[type[Body], tuple[_Field, ...]] = {}


def _fields(body: type[Body]) -> tuple[_Field, ...]:
    """The declared fields of ``body``, worked out on first use (every name is bound then)."""
    found = _FIELDS.get(body)
    if found is None:
        hints = typing.get_type_hints(body, include_extras=True)
        found = _FIELDS[body] = tuple(
            _field_of(
                f.name,
                hints[f.name],
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(body)  # type: ignore[arg-type]
        )
    return found


# -- bodies ----------------------------------------------------------------------------------


class Body:
    """Base of the declared bodies (dataclasses with slots)."""

    __slots__ = ()

    #: Bodies that the schema shows as examples (and the tests send or expect).
    EXAMPLES: ClassVar[tuple[Mapping[str, object], ...]] = ()

    @classmethod
    def schema(cls) -> Schema:
        fields = _fields(cls)
        schema: Schema = {
            "type": "object",
            "additionalProperties": False,
            "properties": {f.name: f.schema() for f in fields},
        }
        required = [f.name for f in fields if f.required]
        if required:
            schema["required"] = required
        doc = cls.__doc__
        if doc:
            schema["description"] = " ".join(doc.split())
        if cls.EXAMPLES:
            schema["examples"] = [dict(example) for example in cls.EXAMPLES]
        return schema

    @classmethod
    def nested(cls) -> Iterator[type[Body]]:
        """The bodies this one holds, at any depth."""
        for f in _fields(cls):
            held = f.items.body if f.items is not None else f.body
            if held is not None:
                yield held
                yield from held.nested()


class Request(Body):
    """A body the API reads; ``EXCLUSIVE`` names pairs of fields a request gives one of."""

    __slots__ = ()

    EXCLUSIVE: ClassVar[tuple[tuple[str, str], ...]] = ()

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        return cls.read(_load(raw), "")

    @classmethod
    def read(cls, body: Mapping[str, object], prefix: str) -> Self:
        known, steps = _readers(cls)
        for name in body:
            if name not in known:
                path = prefix + name
                expected = ", ".join(prefix + step[0] for step in steps)
                raise InvalidRequest(f"unknown field {path!r}; expected {expected}", field=path)
        for first, second in cls.EXCLUSIVE:
            if body.get(first) is not None and body.get(second) is not None:
                raise InvalidRequest(f"give {first} or {second}, not both", field=prefix + second)
        values: dict[str, object] = {}
        for name, attribute, required, read in steps:
            value = body.get(name)
            if value is None:
                if required:
                    raise InvalidRequest(
                        f"field {prefix + name!r} is required", field=prefix + name
                    )
                continue  # the dataclass default
            values[attribute] = read(value, prefix + name)
        return cls(**values)

    @classmethod
    def schema(cls) -> Schema:
        schema = super().schema()
        for f in _fields(cls):
            if not f.required:  # null counts as absent
                schema["properties"][f.name] = dataclasses.replace(f, nullable=True).schema()
        for first, second in cls.EXCLUSIVE:
            schema.setdefault("allOf", []).append(
                {
                    "not": {
                        "required": [first, second],
                        "properties": {
                            first: {"not": {"type": "null"}},
                            second: {"not": {"type": "null"}},
                        },
                    }
                }
            )
        return schema


Reader = Callable[[object, str], object]
_READERS: dict[type[Request], tuple[frozenset[str], tuple[tuple[str, str, bool, Reader], ...]]] = {}


def _readers(
    body: type[Request],
) -> tuple[frozenset[str], tuple[tuple[str, str, bool, Reader], ...]]:
    """The JSON names of ``body``, and per field: JSON name, attribute, whether it is
    required, and its reader (worked out once: this is the path of every request)."""
    found = _READERS.get(body)
    if found is None:
        fields = _fields(body)
        found = _READERS[body] = (
            frozenset(f.name for f in fields),
            tuple((f.name, f.attribute, f.required, _reader(f)) for f in fields),
        )
    return found


def _reader(f: _Field) -> Reader:
    if f.kind is not None:
        return f.kind.read
    if f.body is not None and issubclass(f.body, Request):
        return functools.partial(_read_nested, f.body)
    raise TypeError(f"field {f.name!r} of a request is neither a kind nor a request body")


def _read_nested(body: type[Request], value: object, path: str) -> object:
    if not isinstance(value, dict):
        names = ", ".join(f.name for f in _fields(body))
        raise InvalidRequest(f"field {path!r} must be an object {{{names}}}", field=path)
    return body.read(value, path + ".")


class Response(Body):
    """A body the API answers with (not frozen: one is built per call, and frozen dataclasses
    cost three times as much to build)."""

    __slots__ = ()

    def to_json(self) -> dict[str, object]:
        answer: dict[str, object] = {}
        for attribute, name, write, omit_none in _writers(type(self)):
            value = getattr(self, attribute)
            if value is None:
                if not omit_none:
                    answer[name] = None
            else:
                answer[name] = value if write is None else write(value)
        return answer


_WRITERS: dict[type[Response], tuple[tuple[str, str, Writer | None, bool], ...]] = {}


def _writers(body: type[Response]) -> tuple[tuple[str, str, Writer | None, bool], ...]:
    """Per field: attribute, JSON name, the writer of a value that is not None (None: as it
    is), and whether None is left out (an optional field) rather than written as null."""
    found = _WRITERS.get(body)
    if found is None:
        found = _WRITERS[body] = tuple(
            (f.attribute, f.name, _writer(f), not f.required) for f in _fields(body)
        )
    return found


def _writer(f: _Field) -> Writer | None:
    if f.items is not None:
        item = _writer(f.items)
        if item is None:
            return list
        return functools.partial(_write_items, item)
    if f.body is not None:
        return _write_body
    assert f.kind is not None
    return f.kind.writer()


def _write_items(write: Writer, values: tuple[object, ...]) -> list[object]:
    return [write(value) for value in values]


def _write_body(value: Response) -> dict[str, object]:
    return value.to_json()


def schemas(*roots: type[Body]) -> dict[str, Schema]:
    """The schemas of ``roots`` and of the bodies they hold, by class name."""
    found: dict[str, Schema] = {}
    for root in roots:
        for body in (root, *root.nested()):
            found.setdefault(body.__name__, body.schema())
    return found


# -- reading the raw body --------------------------------------------------------------------


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

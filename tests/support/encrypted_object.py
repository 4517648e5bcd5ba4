"""What kube-apiserver's kms v2 provider stores after its ``k8s:enc:kms:v2:<name>:`` prefix: the
``EncryptedObject`` protobuf of k8s.io/apiserver
(``pkg/storage/value/encrypt/envelope/kmsv2/v2/api.proto``), decoded by a small hand-written
wire-format reader; the plugin's generated code holds the plugin API (``k8s.io/kms``) only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["EncryptedObject", "parse_encrypted_object"]


@dataclass(frozen=True)
class EncryptedObject:
    """k8s.io/apiserver's kmsv2 ``EncryptedObject``, as stored after the provider's prefix."""

    encrypted_data: bytes
    key_id: str
    encrypted_dek_source: bytes
    annotations: dict[str, bytes]
    encrypted_dek_source_type: int


_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(data):
            raise ValueError("truncated varint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: ints for varints, bytes otherwise."""
    offset = 0
    while offset < len(data):
        tag, offset = _varint(data, offset)
        number, wire_type = tag >> 3, tag & 7
        value: int | bytes
        if wire_type == _VARINT:
            value, offset = _varint(data, offset)
        elif wire_type == _LEN:
            length, offset = _varint(data, offset)
            if offset + length > len(data):
                raise ValueError(f"field {number} runs past the end")
            value, offset = data[offset : offset + length], offset + length
        elif wire_type in (_I64, _I32):
            size = 8 if wire_type == _I64 else 4
            value, offset = data[offset : offset + size], offset + size
        else:
            raise ValueError(f"unsupported wire type {wire_type} (field {number})")
        yield number, value


def _bytes(value: int | bytes, number: int) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError(f"field {number} is not length-delimited")
    return value


def parse_encrypted_object(data: bytes) -> EncryptedObject:
    """Decode ``EncryptedObject{encryptedData=1, keyID=2, encryptedDEKSource=3,
    annotations=4 (map<string, bytes>), encryptedDEKSourceType=5}``."""
    encrypted_data = encrypted_dek_source = b""
    key_id = ""
    annotations: dict[str, bytes] = {}
    source_type = 0
    for number, value in _fields(data):
        if number == 1:
            encrypted_data = _bytes(value, number)
        elif number == 2:
            key_id = _bytes(value, number).decode()
        elif number == 3:
            encrypted_dek_source = _bytes(value, number)
        elif number == 4:
            entry = dict(_fields(_bytes(value, number)))
            annotations[_bytes(entry.get(1, b""), 1).decode()] = _bytes(entry.get(2, b""), 2)
        elif number == 5:
            if not isinstance(value, int):
                raise ValueError("field 5 is not a varint")
            source_type = value
    return EncryptedObject(encrypted_data, key_id, encrypted_dek_source, annotations, source_type)

"""The reader of kms v2 EncryptedObjects (tests.support.encrypted_object), on hand-encoded
protobuf: the integration tests read key ids from etcd with it."""

from __future__ import annotations

import pytest
from tests.support.encrypted_object import parse_encrypted_object

pytestmark = pytest.mark.unit


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def test_every_field_is_read() -> None:
    data = b"\x01" * 200  # a length over 127 takes a two-byte varint
    entry = _field(1, b"kms.cmk.dev/version") + _field(2, b"\x00\x01")
    encoded = (
        _field(1, data)
        + _field(2, b"kms-key-1:v2")
        + _field(3, b"wrapped-seed")
        + _field(4, entry)
        + _varint(5 << 3 | 0)
        + _varint(1)
    )
    parsed = parse_encrypted_object(encoded)
    assert parsed.encrypted_data == data
    assert parsed.key_id == "kms-key-1:v2"
    assert parsed.encrypted_dek_source == b"wrapped-seed"
    assert parsed.annotations == {"kms.cmk.dev/version": b"\x00\x01"}
    assert parsed.encrypted_dek_source_type == 1


def test_fields_come_in_any_order_and_unknown_ones_are_skipped() -> None:
    encoded = _varint(9 << 3 | 0) + _varint(300) + _field(2, b"k") + _field(1, b"d")
    parsed = parse_encrypted_object(encoded)
    assert (parsed.key_id, parsed.encrypted_data, parsed.encrypted_dek_source_type) == (
        "k",
        b"d",
        0,
    )


@pytest.mark.parametrize(
    "encoded",
    [_field(2, b"key-id")[:-2], b"\x12", b"\x12\xff", b"\x13"],
    ids=["value past the end", "no length", "truncated varint", "unsupported wire type"],
)
def test_a_truncated_or_malformed_message_is_refused(encoded: bytes) -> None:
    with pytest.raises(ValueError):
        parse_encrypted_object(encoded)

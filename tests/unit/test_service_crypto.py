"""Crypto through KeyService: encrypt, decrypt, data keys, re-encrypt and random.

The blob's byte layout has its own known-answer tests (test_blob.py); here the service's
rules: limits, contexts, which key a blob names, and one opaque error for every bad blob.
"""

from __future__ import annotations

import uuid

import pytest
from tests.support.changes import rotate, set_aliases

from kms_operator.crypto import blob as blobs
from kms_operator.errors import (
    InvalidCiphertext,
    InvalidRequest,
    KeyDisabled,
    KeyPendingImport,
    NotFound,
)
from kms_operator.keys.service import KeyService
from kms_operator.store.records import Origin

pytestmark = pytest.mark.unit

NS = "payments"
CTX = {"tenant": "acme", "purpose": "orders"}


@pytest.fixture
def key_id(service: KeyService) -> uuid.UUID:
    return service.create_key(NS, "orders", aliases=["alias/orders"]).key_id


# -- encrypt / decrypt -------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 32, 4096])
def test_round_trip(service: KeyService, key_id: uuid.UUID, size: int) -> None:
    plaintext = bytes(range(256)) * (size // 256) + bytes(size % 256)

    sealed = service.encrypt(NS, "orders", plaintext, CTX)
    opened = service.decrypt(sealed.ciphertext_blob, CTX)

    assert (sealed.key_id, sealed.key_version) == (key_id, 1)
    assert opened.plaintext == plaintext
    assert (opened.key_id, opened.key_version) == (key_id, 1)
    assert len(sealed.ciphertext_blob) == blobs.HEADER_SIZE + size + blobs.TAG_SIZE


def test_blob_header_names_key_and_version(service: KeyService, key_id: uuid.UUID) -> None:
    rotate(service, key_id)
    sealed = service.encrypt(NS, "alias/orders", b"x")

    header = blobs.parse_header(sealed.ciphertext_blob)

    assert (header.key_id, header.version) == (key_id, 2)
    assert service.key_of_blob(sealed.ciphertext_blob).key_id == key_id


def test_each_encryption_is_fresh(service: KeyService, key_id: uuid.UUID) -> None:
    first = service.encrypt(NS, "orders", b"same")
    second = service.encrypt(NS, "orders", b"same")

    assert first.ciphertext_blob != second.ciphertext_blob


def test_plaintext_over_4096_bytes_is_refused(service: KeyService, key_id: uuid.UUID) -> None:
    with pytest.raises(InvalidRequest, match="4097 bytes") as caught:
        service.encrypt(NS, "orders", bytes(4097))

    assert caught.value.field == "plaintext"


def test_encrypt_with_unknown_key_is_not_found(service: KeyService) -> None:
    with pytest.raises(NotFound):
        service.encrypt(NS, "missing", b"x")


@pytest.mark.parametrize(
    ("sealed_with", "opened_with"),
    [
        (CTX, None),
        (None, CTX),
        (CTX, {**CTX, "tenant": "other"}),
        (CTX, {"tenant": "acme"}),
        (CTX, {**CTX, "extra": "1"}),
    ],
)
def test_context_must_match_exactly(
    service: KeyService,
    key_id: uuid.UUID,
    sealed_with: dict[str, str] | None,
    opened_with: dict[str, str] | None,
) -> None:
    sealed = service.encrypt(NS, "orders", b"secret", sealed_with)

    with pytest.raises(InvalidCiphertext) as caught:
        service.decrypt(sealed.ciphertext_blob, opened_with)

    assert caught.value.message == InvalidCiphertext.MESSAGE


def test_context_order_and_empty_context_do_not_matter(
    service: KeyService, key_id: uuid.UUID
) -> None:
    sealed = service.encrypt(NS, "orders", b"secret", {"b": "2", "a": "1"})
    no_context = service.encrypt(NS, "orders", b"plain")

    assert service.decrypt(sealed.ciphertext_blob, {"a": "1", "b": "2"}).plaintext == b"secret"
    assert service.decrypt(no_context.ciphertext_blob, {}).plaintext == b"plain"


def test_every_bad_blob_is_the_same_invalid_ciphertext(
    service: KeyService, key_id: uuid.UUID
) -> None:
    good = service.encrypt(NS, "orders", b"secret", CTX).ciphertext_blob
    other = service.create_key(NS, "other").key_id
    header = blobs.parse_header(good)
    unknown_key = blobs.BlobHeader(uuid.uuid4(), 1, header.nonce).pack() + good[36:]
    other_key = blobs.BlobHeader(other, 1, header.nonce).pack() + good[36:]
    unknown_version = blobs.BlobHeader(key_id, 9, header.nonce).pack() + good[36:]
    version_zero = blobs.BlobHeader(key_id, 0, header.nonce).pack() + good[36:]
    bad = [
        b"",
        good[:10],
        good[:-1],
        good[: blobs.HEADER_SIZE + blobs.TAG_SIZE - 1],
        b"KMS2" + good[4:],
        good + b"\x00",
        unknown_key,
        other_key,
        unknown_version,
        version_zero,
    ]
    bad += [good[:i] + bytes([good[i] ^ 0x01]) + good[i + 1 :] for i in range(4, len(good), 7)]

    for blob in bad:
        with pytest.raises(InvalidCiphertext) as caught:
            service.decrypt(blob, CTX)
        assert caught.value.message == InvalidCiphertext.MESSAGE
        assert caught.value.code == "InvalidCiphertext"


def test_decrypt_needs_no_namespace_and_ignores_aliases(
    service: KeyService, key_id: uuid.UUID
) -> None:
    sealed = service.encrypt(NS, "alias/orders", b"data")
    set_aliases(service, key_id, [])

    assert service.decrypt(sealed.ciphertext_blob).plaintext == b"data"


# -- data keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "number", "size"),
    [
        (None, None, 32),
        ("AES_256", None, 32),
        ("AES_128", None, 16),
        (None, 1, 1),
        (None, 1024, 1024),
    ],
)
def test_generate_data_key_sizes(
    service: KeyService,
    key_id: uuid.UUID,
    spec: str | None,
    number: int | None,
    size: int,
) -> None:
    result = service.generate_data_key(
        NS, "orders", key_spec=spec, number_of_bytes=number, context=CTX
    )

    assert result.plaintext is not None
    assert len(result.plaintext) == size
    assert (result.key_id, result.key_version) == (key_id, 1)
    assert service.decrypt(result.ciphertext_blob, CTX).plaintext == result.plaintext


def test_generate_data_key_without_plaintext(service: KeyService, key_id: uuid.UUID) -> None:
    result = service.generate_data_key(NS, "orders", with_plaintext=False)

    assert result.plaintext is None
    assert len(service.decrypt(result.ciphertext_blob).plaintext) == 32


def test_data_keys_are_random(service: KeyService, key_id: uuid.UUID) -> None:
    keys = {service.generate_data_key(NS, "orders").plaintext for _ in range(20)}

    assert len(keys) == 20


@pytest.mark.parametrize(
    ("spec", "number", "field"),
    [
        ("AES_256", 32, "numberOfBytes"),
        (None, 0, "numberOfBytes"),
        (None, 1025, "numberOfBytes"),
        ("AES_512", None, "keySpec"),
    ],
)
def test_generate_data_key_bad_sizes(
    service: KeyService, key_id: uuid.UUID, spec: str | None, number: int | None, field: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        service.generate_data_key(NS, "orders", key_spec=spec, number_of_bytes=number)

    assert caught.value.field == field


def test_data_key_context_scopes_the_blob(service: KeyService, key_id: uuid.UUID) -> None:
    scope = {"kms.cmk.dev/namespace": NS, "kms.cmk.dev/datakey": "db"}
    result = service.generate_data_key(NS, "orders", context=scope)

    with pytest.raises(InvalidCiphertext):
        service.decrypt(result.ciphertext_blob, {**scope, "kms.cmk.dev/namespace": "billing"})


# -- re-encrypt --------------------------------------------------------------------------


def test_re_encrypt_between_keys_and_namespaces(service: KeyService, key_id: uuid.UUID) -> None:
    target = service.create_key("billing", "ledger", aliases=["alias/ledger"]).key_id
    sealed = service.encrypt(NS, "orders", b"move me", {"from": "payments"})

    moved = service.re_encrypt(
        sealed.ciphertext_blob,
        "billing",
        "alias/ledger",
        source_context={"from": "payments"},
        destination_context={"to": "billing"},
    )

    assert (moved.source_key_id, moved.source_key_version) == (key_id, 1)
    assert (moved.key_id, moved.key_version) == (target, 1)
    assert blobs.parse_header(moved.ciphertext_blob).key_id == target
    assert service.decrypt(moved.ciphertext_blob, {"to": "billing"}).plaintext == b"move me"
    with pytest.raises(InvalidCiphertext):
        service.decrypt(moved.ciphertext_blob, {"from": "payments"})


def test_re_encrypt_to_the_current_version_after_rotation(
    service: KeyService, key_id: uuid.UUID
) -> None:
    sealed = service.encrypt(NS, "orders", b"data")
    rotate(service, key_id)

    moved = service.re_encrypt(sealed.ciphertext_blob, NS, "orders")

    assert (moved.source_key_version, moved.key_version) == (1, 2)
    assert service.decrypt(moved.ciphertext_blob).plaintext == b"data"


def test_re_encrypt_checks_source_context_and_destination(
    service: KeyService, key_id: uuid.UUID
) -> None:
    sealed = service.encrypt(NS, "orders", b"data", CTX)
    service.create_key("billing", "off", enabled=False)
    service.create_key("billing", "byok", origin=Origin.EXTERNAL)

    with pytest.raises(InvalidCiphertext):
        service.re_encrypt(sealed.ciphertext_blob, NS, "orders")
    with pytest.raises(NotFound):
        service.re_encrypt(sealed.ciphertext_blob, "billing", "orders", source_context=CTX)
    with pytest.raises(KeyDisabled):
        service.re_encrypt(sealed.ciphertext_blob, "billing", "off", source_context=CTX)
    with pytest.raises(KeyPendingImport, match="PendingImport"):
        service.re_encrypt(sealed.ciphertext_blob, "billing", "byok", source_context=CTX)


# -- random ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 32, 1024])
def test_random(service: KeyService, size: int) -> None:
    assert len(service.random(size)) == size


@pytest.mark.parametrize("size", [0, -1, 1025])
def test_random_out_of_range(service: KeyService, size: int) -> None:
    with pytest.raises(InvalidRequest, match="between 1 and 1024") as caught:
        service.random(size)

    assert caught.value.field == "numberOfBytes"

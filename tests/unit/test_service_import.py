"""Imported key material (EXTERNAL keys) through KeyService.

Import parameters and their tokens, both wrapping algorithms, the 32-byte rule, ``validTo``,
the same-material rule (only the original material brings old ciphertexts back), rotation by
import, deletion and expiry of material. The wrapping primitives themselves are tested in
test_wrapping.py.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from tests.support.changes import fire
from tests.support.clocks import ManualClock
from tests.support.importing import Importer

from kms_operator.crypto.wrapping import WrappingAlgorithm, WrappingKeySpec
from kms_operator.errors import (
    ExpiredImportToken,
    IncorrectKeyMaterial,
    InvalidImportToken,
    InvalidRequest,
    KeyPendingDeletion,
    KeyPendingImport,
)
from kms_operator.keys.clock import Timescale
from kms_operator.keys.service import KeyService, Timer
from kms_operator.store.records import KeyState, Origin, VersionState
from kms_operator.store.rootkey import legacy_fingerprint
from kms_operator.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.unit

NS = "payments"
DAY = timedelta(days=1)
MATERIAL = bytes(range(32))
OTHER_MATERIAL = bytes(range(100, 132))
ALGORITHMS = list(WrappingAlgorithm)


@pytest.fixture
def key_id(service: KeyService) -> uuid.UUID:
    return service.create_key(NS, "byok", origin=Origin.EXTERNAL).key_id


# -- import parameters -------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_import_parameters(
    importer: Importer, clock: ManualClock, key_id: uuid.UUID, algorithm: WrappingAlgorithm
) -> None:
    params = importer.parameters(key_id, algorithm)

    assert params.key_id == key_id
    assert params.wrapping_algorithm == algorithm.value
    assert params.wrapping_key_spec == "RSA_2048"
    assert params.public_key_pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert params.token.startswith("kmsit1_")
    assert params.expires_at == clock.now() + DAY
    assert importer.parameters(key_id, algorithm).token != params.token


def test_import_parameters_with_a_real_rsa_3072_key(service: KeyService, key_id: uuid.UUID) -> None:
    params = service.create_import_parameters(
        key_id, WrappingAlgorithm.RSA_AES_KEY_WRAP_SHA_256, WrappingKeySpec.RSA_3072
    )

    record, version = service.import_material(key_id, params.token, Importer.wrap(params, MATERIAL))

    assert params.wrapping_key_spec == "RSA_3072"
    assert (record.state, version) == (KeyState.ENABLED, 1)


def test_import_parameters_only_for_external_keys(importer: Importer, service: KeyService) -> None:
    kms_key = service.create_key(NS, "native")

    with pytest.raises(InvalidRequest, match="KMS origin") as caught:
        importer.parameters(kms_key.key_id)

    assert caught.value.field == "keyRef"


def test_import_token_expires_after_one_day(
    importer: Importer, service: KeyService, clock: ManualClock, key_id: uuid.UUID
) -> None:
    params = importer.parameters(key_id)
    wrapped = importer.wrap(params, MATERIAL)
    clock.advance(DAY)

    with pytest.raises(ExpiredImportToken, match="expired"):
        service.import_material(key_id, params.token, wrapped)

    assert service.get(key_id).state is KeyState.PENDING_IMPORT


def test_import_token_just_before_expiry_works(
    importer: Importer, service: KeyService, clock: ManualClock, key_id: uuid.UUID
) -> None:
    params = importer.parameters(key_id)
    clock.advance(DAY - timedelta(seconds=1))

    record, _ = service.import_material(key_id, params.token, importer.wrap(params, MATERIAL))

    assert record.state is KeyState.ENABLED


def test_import_token_of_another_key_is_invalid(
    importer: Importer, service: KeyService, key_id: uuid.UUID
) -> None:
    other = service.create_key(NS, "byok-2", origin=Origin.EXTERNAL).key_id
    params = importer.parameters(other)
    wrapped = importer.wrap(params, MATERIAL)

    for token in (params.token, "kmsit1_unknown", ""):
        with pytest.raises(InvalidImportToken, match=f"{NS}/byok"):
            service.import_material(key_id, token, wrapped)

    assert service.get(key_id).state is KeyState.PENDING_IMPORT


def test_import_token_lifetime_follows_the_timescale(
    store: SqliteKeyStore, clock: ManualClock, fast_wrapping_keys: None
) -> None:
    fast = KeyService(store, clock=clock, timescale=Timescale(day_seconds=1))
    key = fast.create_key(NS, "byok", origin=Origin.EXTERNAL)
    params = Importer(fast).parameters(key.key_id)

    assert params.expires_at == clock.now() + timedelta(seconds=1)
    clock.advance(timedelta(seconds=1))
    with pytest.raises(ExpiredImportToken):
        fast.import_material(key.key_id, params.token, Importer.wrap(params, MATERIAL))


# -- importing material ------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_import_enables_the_key(
    importer: Importer,
    service: KeyService,
    *,
    store: SqliteKeyStore,
    clock: ManualClock,
    key_id: uuid.UUID,
    algorithm: WrappingAlgorithm,
) -> None:
    record, version = importer.import_material(key_id, MATERIAL, algorithm=algorithm)

    assert version == 1
    assert record.state is KeyState.ENABLED
    assert record.versions[0].state is VersionState.ENABLED
    assert record.versions[0].imported_at == clock.now()
    assert record.versions[0].expires_at is None
    assert record.versions[0].fingerprint == store.fingerprint(key_id, MATERIAL)
    assert record.versions[0].fingerprint != legacy_fingerprint(key_id, MATERIAL)
    sealed = service.encrypt(NS, "byok", b"byok data")
    assert service.decrypt(sealed.ciphertext_blob).plaintext == b"byok data"


def test_imported_material_is_the_key(
    importer: Importer, service: KeyService, key_id: uuid.UUID
) -> None:
    # A blob made with the material outside the KMS opens inside it: the import is faithful.
    from kms_operator.crypto import blob as blobs
    from kms_operator.crypto import primitives

    importer.import_material(key_id, MATERIAL)
    outside = blobs.seal(primitives.Aead(MATERIAL), key_id, 1, b"made outside", {"a": "b"})

    assert service.decrypt(outside, {"a": "b"}).plaintext == b"made outside"


@pytest.mark.parametrize("size", [1, 16, 31, 33, 64])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_material_must_be_32_bytes(
    importer: Importer,
    service: KeyService,
    key_id: uuid.UUID,
    size: int,
    algorithm: WrappingAlgorithm,
) -> None:
    with pytest.raises(IncorrectKeyMaterial, match=f"32 bytes, got {size}"):
        importer.import_material(key_id, os.urandom(size), algorithm=algorithm)

    assert service.get(key_id).state is KeyState.PENDING_IMPORT


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_material_that_does_not_unwrap_is_incorrect(
    importer: Importer, service: KeyService, key_id: uuid.UUID, algorithm: WrappingAlgorithm
) -> None:
    params = importer.parameters(key_id, algorithm)
    other = importer.parameters(service.create_key(NS, "x", origin=Origin.EXTERNAL).key_id)
    good = importer.wrap(params, MATERIAL)
    candidates = [
        b"",
        b"garbage",
        os.urandom(len(good)),
        good[:-1],
        good[:256],
        bytes([good[0] ^ 1]) + good[1:],
        good[:-1] + bytes([good[-1] ^ 1]),
    ]
    if other.public_key_pem != params.public_key_pem:
        candidates.append(importer.wrap(other, MATERIAL))

    for wrapped in candidates:
        if wrapped == good:
            continue
        with pytest.raises(IncorrectKeyMaterial, match=r"does not unwrap|32 bytes"):
            service.import_material(key_id, params.token, wrapped)

    assert service.get(key_id).state is KeyState.PENDING_IMPORT


@pytest.mark.parametrize(
    "valid_to",
    [-DAY, timedelta(0), 365 * DAY + timedelta(seconds=1), 400 * DAY],
)
def test_valid_to_must_be_future_and_within_365_days(
    importer: Importer,
    service: KeyService,
    clock: ManualClock,
    key_id: uuid.UUID,
    valid_to: timedelta,
) -> None:
    with pytest.raises(InvalidRequest, match="365") as caught:
        importer.import_material(key_id, MATERIAL, valid_to=clock.now() + valid_to)

    assert caught.value.field == "validTo"
    assert service.get(key_id).state is KeyState.PENDING_IMPORT


def test_valid_to_of_exactly_365_days_is_accepted(
    importer: Importer, clock: ManualClock, key_id: uuid.UUID
) -> None:
    record, _ = importer.import_material(key_id, MATERIAL, valid_to=clock.now() + 365 * DAY)

    assert record.versions[0].expires_at == clock.now() + 365 * DAY


def test_import_refused_for_a_key_pending_deletion(
    importer: Importer, service: KeyService, key_id: uuid.UUID
) -> None:
    params = importer.parameters(key_id)
    wrapped = importer.wrap(params, MATERIAL)
    service.schedule_deletion(key_id, 7)

    with pytest.raises(KeyPendingDeletion, match="PendingDeletion"):
        service.import_material(key_id, params.token, wrapped)
    with pytest.raises(KeyPendingDeletion):
        importer.parameters(key_id)


# -- the same-material rule --------------------------------------------------------------


def test_only_the_same_material_restores_deleted_material(
    importer: Importer,
    service: KeyService,
    reopen: Callable[[], KeyService],
    key_id: uuid.UUID,
) -> None:
    importer.import_material(key_id, MATERIAL)
    sealed = [service.encrypt(NS, "byok", f"blob {i}".encode(), {"i": str(i)}) for i in range(3)]

    deleted = service.delete_imported_material(key_id)

    assert deleted.state is KeyState.PENDING_IMPORT
    assert deleted.versions[0].state is VersionState.PENDING_IMPORT
    assert deleted.versions[0].fingerprint is not None
    with pytest.raises(KeyPendingImport, match="PendingImport"):
        service.decrypt(sealed[0].ciphertext_blob, {"i": "0"})
    with pytest.raises(KeyPendingImport, match="PendingImport"):
        service.encrypt(NS, "byok", b"x")

    # The fingerprint survives a restart: a different material is still refused.
    restarted = reopen()
    wrong = Importer(restarted)
    for algorithm in ALGORITHMS:
        with pytest.raises(IncorrectKeyMaterial, match="same material"):
            wrong.import_material(key_id, OTHER_MATERIAL, algorithm=algorithm)

    record, version = Importer(restarted).import_material(key_id, MATERIAL)

    assert (record.state, version) == (KeyState.ENABLED, 1)
    for i, one in enumerate(sealed):
        assert restarted.decrypt(one.ciphertext_blob, {"i": str(i)}).plaintext == (
            f"blob {i}".encode()
        )


def test_importing_new_material_into_an_enabled_key_rotates_it(
    importer: Importer, service: KeyService, clock: ManualClock, key_id: uuid.UUID
) -> None:
    importer.import_material(key_id, MATERIAL)
    old = service.encrypt(NS, "byok", b"under v1")
    clock.advance(DAY)

    record, version = importer.import_material(key_id, OTHER_MATERIAL)

    assert version == 2
    assert record.current_version == 2
    assert record.last_rotated_at == clock.now()
    new = service.encrypt(NS, "byok", b"under v2")
    assert new.key_version == 2
    assert service.decrypt(old.ciphertext_blob).plaintext == b"under v1"
    assert service.decrypt(new.ciphertext_blob).plaintext == b"under v2"

    # Re-importing a version's own material is not a rotation.
    again, same = importer.import_material(key_id, MATERIAL)
    assert (same, again.current_version) == (1, 2)


def test_every_version_needs_its_own_material_back(
    importer: Importer, service: KeyService, key_id: uuid.UUID
) -> None:
    importer.import_material(key_id, MATERIAL)
    v1 = service.encrypt(NS, "byok", b"one")
    importer.import_material(key_id, OTHER_MATERIAL)
    v2 = service.encrypt(NS, "byok", b"two")
    service.delete_imported_material(key_id)

    with pytest.raises(IncorrectKeyMaterial):
        importer.import_material(key_id, os.urandom(32))

    record, version = importer.import_material(key_id, MATERIAL)
    assert version == 1
    assert record.state is KeyState.PENDING_IMPORT  # the current version is still missing
    with pytest.raises(KeyPendingImport):
        service.decrypt(v1.ciphertext_blob)

    record, version = importer.import_material(key_id, OTHER_MATERIAL)
    assert (record.state, version) == (KeyState.ENABLED, 2)
    assert service.decrypt(v1.ciphertext_blob).plaintext == b"one"
    assert service.decrypt(v2.ciphertext_blob).plaintext == b"two"


def test_deleting_one_version_keeps_the_others(
    importer: Importer, service: KeyService, key_id: uuid.UUID
) -> None:
    importer.import_material(key_id, MATERIAL)
    v1 = service.encrypt(NS, "byok", b"one")
    importer.import_material(key_id, OTHER_MATERIAL)
    v2 = service.encrypt(NS, "byok", b"two")

    record = service.delete_imported_material(key_id, versions=[1])

    assert record.state is KeyState.ENABLED
    assert [v.state for v in record.versions] == [VersionState.PENDING_IMPORT, VersionState.ENABLED]
    with pytest.raises(KeyPendingImport, match="version 1 has no material"):
        service.decrypt(v1.ciphertext_blob)
    assert service.decrypt(v2.ciphertext_blob).plaintext == b"two"


def test_fingerprints_differ_between_keys(
    importer: Importer, service: KeyService, key_id: uuid.UUID
) -> None:
    other = service.create_key(NS, "byok-2", origin=Origin.EXTERNAL).key_id
    first, _ = importer.import_material(key_id, MATERIAL)
    second, _ = importer.import_material(other, MATERIAL)

    assert first.versions[0].fingerprint != second.versions[0].fingerprint


def test_delete_material_of_kms_key_is_refused(service: KeyService) -> None:
    key = service.create_key(NS, "native")

    with pytest.raises(InvalidRequest, match="KMS origin") as caught:
        service.delete_imported_material(key.key_id)

    assert caught.value.field == "origin"


def test_delete_material_is_idempotent(
    importer: Importer, service: KeyService, key_id: uuid.UUID
) -> None:
    importer.import_material(key_id, MATERIAL)
    once = service.delete_imported_material(key_id)

    assert service.delete_imported_material(key_id) is once


# -- expiry ------------------------------------------------------------------------------


def test_expired_material_is_refused_at_once_then_dropped(
    importer: Importer, service: KeyService, clock: ManualClock, key_id: uuid.UUID
) -> None:
    valid_to = clock.now() + 10 * DAY
    importer.import_material(key_id, MATERIAL, valid_to=valid_to)
    sealed = service.encrypt(NS, "byok", b"short-lived")
    assert service.next_deadline(key_id) == valid_to
    assert fire(service, key_id, Timer.EXPIRY) is None

    clock.set(valid_to)

    # The timer has not run yet: the record still says Enabled, but nothing works.
    assert service.get(key_id).versions[0].state is VersionState.ENABLED
    with pytest.raises(KeyPendingImport, match="expired"):
        service.encrypt(NS, "byok", b"x")
    with pytest.raises(KeyPendingImport):
        service.generate_data_key(NS, "byok")
    with pytest.raises(KeyPendingImport):
        service.decrypt(sealed.ciphertext_blob)

    expired = fire(service, key_id, Timer.EXPIRY)

    assert expired is not None
    assert expired.state is KeyState.PENDING_IMPORT
    assert expired.versions[0].state is VersionState.PENDING_IMPORT
    assert expired.versions[0].expires_at is None
    assert service.next_deadline(key_id) is None
    assert fire(service, key_id, Timer.EXPIRY) is None

    # The same material brings it back, with a new validity.
    record, _ = importer.import_material(key_id, MATERIAL, valid_to=clock.now() + DAY)
    assert record.state is KeyState.ENABLED
    assert service.decrypt(sealed.ciphertext_blob).plaintext == b"short-lived"


def test_reimport_extends_validity(
    importer: Importer, service: KeyService, clock: ManualClock, key_id: uuid.UUID
) -> None:
    importer.import_material(key_id, MATERIAL, valid_to=clock.now() + DAY)

    record, _ = importer.import_material(key_id, MATERIAL, valid_to=clock.now() + 30 * DAY)

    assert record.versions[0].expires_at == clock.now() + 30 * DAY
    clock.advance(2 * DAY)
    assert fire(service, key_id, Timer.EXPIRY) is None
    assert service.encrypt(NS, "byok", b"x").key_version == 1

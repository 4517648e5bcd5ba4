"""The encrypt/decrypt fast paths never outlive the state that allowed them.

Each test warms the fast path with a successful call, changes the key, and checks the next
call sees the change exactly as the slow path would.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.support.changes import fire, rotate, set_aliases, set_enabled
from tests.support.clocks import ManualClock
from tests.support.importing import Importer

from kms_operator.errors import (
    InvalidCiphertext,
    KeyDisabled,
    KeyPendingDeletion,
    KeyPendingImport,
    KeyStateError,
    NotFound,
)
from kms_operator.keys.service import KeyService, Timer
from kms_operator.store.records import Origin

pytestmark = pytest.mark.unit


def _warm(
    service: KeyService, reference: str = "k", context: dict[str, str] | None = None
) -> bytes:
    blob = service.encrypt("ns", reference, b"secret", context).ciphertext_blob
    assert service.decrypt(blob, context).plaintext == b"secret"
    service.encrypt("ns", reference, b"again", context)  # served by the fast path now
    return blob


def test_disable_is_seen_by_both_paths(service: KeyService) -> None:
    key = service.create_key("ns", "k")
    blob = _warm(service)
    set_enabled(service, key.key_id, False)
    with pytest.raises(KeyDisabled):
        service.encrypt("ns", "k", b"x")
    with pytest.raises(KeyDisabled):
        service.decrypt(blob)
    set_enabled(service, key.key_id, True)
    assert service.decrypt(blob).plaintext == b"secret"


def test_rotation_moves_encrypt_to_the_new_version(service: KeyService) -> None:
    key = service.create_key("ns", "k")
    old = _warm(service)
    rotate(service, key.key_id)
    assert service.encrypt("ns", "k", b"x").key_version == 2
    assert service.decrypt(old).key_version == 1


def test_alias_moved_to_another_key(service: KeyService) -> None:
    first = service.create_key("ns", "a", aliases=["alias/x"])
    _warm(service, "alias/x")
    set_aliases(service, first.key_id, [])
    with pytest.raises(NotFound):
        service.encrypt("ns", "alias/x", b"x")
    second = service.create_key("ns", "b", aliases=["alias/x"])
    assert service.encrypt("ns", "alias/x", b"x").key_id == second.key_id


def test_pending_deletion_and_destruction(service: KeyService, clock: ManualClock) -> None:
    key = service.create_key("ns", "k")
    blob = _warm(service)
    service.schedule_deletion(key.key_id, 7)
    with pytest.raises(KeyPendingDeletion):
        service.encrypt("ns", "k", b"x")
    with pytest.raises(KeyPendingDeletion):
        service.decrypt(blob)
    clock.advance(timedelta(days=8))
    assert fire(service, key.key_id, Timer.DESTRUCTION) is not None
    with pytest.raises(KeyStateError):
        service.decrypt(blob)
    with pytest.raises(NotFound):
        service.encrypt("ns", "k", b"x")


def test_wrong_context_and_tampering_on_the_fast_path(service: KeyService) -> None:
    service.create_key("ns", "k")
    blob = _warm(service, context={"a": "1"})
    with pytest.raises(InvalidCiphertext) as wrong:
        service.decrypt(blob, {"a": "2"})
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(InvalidCiphertext) as flipped:
        service.decrypt(bytes(tampered), {"a": "1"})
    assert str(wrong.value) == str(flipped.value) == InvalidCiphertext.MESSAGE


def test_deleted_and_expiring_material(
    service: KeyService, importer: Importer, clock: ManualClock
) -> None:
    key = service.create_key("ns", "ext", origin=Origin.EXTERNAL)
    material = b"m" * 32
    importer.import_material(key.key_id, material)
    blob = _warm(service, "ext")
    service.delete_imported_material(key.key_id)
    with pytest.raises(KeyPendingImport):
        service.encrypt("ns", "ext", b"x")
    with pytest.raises(KeyPendingImport):
        service.decrypt(blob)
    # Material with a validTo is never on the fast path: expiry needs the clock.
    importer.import_material(key.key_id, material, valid_to=clock.now() + timedelta(days=2))
    assert service.decrypt(_warm(service, "ext")).plaintext == b"secret"
    clock.advance(timedelta(days=3))
    with pytest.raises(KeyPendingImport):
        service.encrypt("ns", "ext", b"x")
    with pytest.raises(KeyPendingImport):
        service.decrypt(blob)

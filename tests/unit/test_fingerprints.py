"""Fingerprints of imported material are keyed from the root key (issue 8, item 14).

A fingerprint lets only the same material be imported again into a key whose material was
deleted. Keyed by the public key id alone (v1), a copy of the store let anyone test guesses of
low-entropy material offline; v2 is ``HMAC(key derived from the root key, v1)``, and stores
of schema 3 are migrated at open, without the material.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest
from tests.support.clocks import ManualClock
from tests.support.importing import Importer
from tests.support.schemas import downgrade

from kms_operator.crypto import primitives
from kms_operator.errors import IncorrectKeyMaterial, StoreError
from kms_operator.keys.service import KeyService
from kms_operator.store.records import Origin, VersionState
from kms_operator.store.rootkey import RootKey, legacy_fingerprint
from kms_operator.store.sqlite import SCHEMA_VERSION, SqliteKeyStore

pytestmark = pytest.mark.unit

NS = "team-a"
#: Low-entropy material, the kind a guess finds: one repeated byte.
WEAK = bytes([7]) * 32
OTHER = bytes(range(32))


def _stored_fingerprints(path: Path, key_id: uuid.UUID) -> list[bytes | None]:
    conn = sqlite3.connect(path)
    try:
        return [
            None if fp is None else bytes(fp)
            for (fp,) in conn.execute(
                "SELECT fingerprint FROM versions WHERE key_id = ? ORDER BY version", (str(key_id),)
            )
        ]
    finally:
        conn.close()


def _files(path: Path) -> bytes:
    return b"".join(
        Path(f"{path}{suffix}").read_bytes()
        for suffix in ("", "-wal")
        if Path(f"{path}{suffix}").exists()
    )


def test_a_copy_of_the_store_cannot_confirm_a_guess(
    service: KeyService, importer: Importer, store: SqliteKeyStore, store_path: Path
) -> None:
    key = service.create_key(NS, "byok", origin=Origin.EXTERNAL)
    importer.import_material(key.key_id, WEAK)
    (stored,) = _stored_fingerprints(store_path, key.key_id)
    assert stored is not None
    # Everything the copy holds (the key id, the fingerprint) and every guess, the right one
    # included: no keyed-by-key-id HMAC of a guess matches what is stored.
    for guess in [bytes([b]) * 32 for b in range(256)]:
        assert legacy_fingerprint(key.key_id, guess) != stored
        assert primitives.hmac_sha256(key.key_id.bytes, guess) != stored
        assert primitives.hmac_sha256(key.key_id.bytes + guess, b"") != stored
    # Only the root key's derived key makes the match, and another root key does not.
    assert store.fingerprint(key.key_id, WEAK) == stored
    assert RootKey.generate().material_fingerprint(key.key_id, WEAK) != stored
    assert WEAK not in _files(store_path)


def test_equal_material_in_two_keys_has_two_fingerprints(
    service: KeyService, importer: Importer, store_path: Path
) -> None:
    first = service.create_key(NS, "first", origin=Origin.EXTERNAL)
    second = service.create_key(NS, "second", origin=Origin.EXTERNAL)
    importer.import_material(first.key_id, WEAK)
    importer.import_material(second.key_id, WEAK)
    assert _stored_fingerprints(store_path, first.key_id) != _stored_fingerprints(
        store_path, second.key_id
    )


def _schema_three_store(path: Path, root_key: RootKey, service_clock: ManualClock) -> uuid.UUID:
    """A store as schema 3 left it: an EXTERNAL key whose material was deleted, fingerprint v1."""
    store = SqliteKeyStore(path, root_key)
    service = KeyService(store, clock=service_clock)
    key = service.create_key(NS, "byok", origin=Origin.EXTERNAL)
    Importer(service).import_material(key.key_id, WEAK)
    service.delete_imported_material(key.key_id)
    store.close()
    conn = sqlite3.connect(path)
    conn.execute(
        "UPDATE versions SET fingerprint = ? WHERE key_id = ?",
        (legacy_fingerprint(key.key_id, WEAK), str(key.key_id)),
    )
    conn.commit()
    conn.close()
    downgrade(path, 3)
    return key.key_id


def test_fingerprints_of_schema_three_are_migrated_at_open(
    tmp_path: Path, root_key: RootKey, clock: ManualClock, fast_wrapping_keys: None
) -> None:
    path = tmp_path / "v3.db"
    key_id = _schema_three_store(path, root_key, clock)
    legacy = legacy_fingerprint(key_id, WEAK)
    assert _stored_fingerprints(path, key_id) == [legacy]

    store = SqliteKeyStore(path, root_key)
    try:
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        (migrated,) = _stored_fingerprints(path, key_id)
        assert migrated == root_key.upgrade_fingerprint(legacy)
        assert migrated == store.fingerprint(key_id, WEAK)  # as if imported today
        assert legacy not in _files(path)
        service = KeyService(store, clock=clock)
        importer = Importer(service)
        # Different material is still refused: only the original brings the version back.
        with pytest.raises(IncorrectKeyMaterial):
            importer.import_material(key_id, OTHER)
        record, version = importer.import_material(key_id, WEAK)
        assert version == 1
        assert record.versions[0].state is VersionState.ENABLED
        assert record.versions[0].fingerprint == migrated
    finally:
        store.close()
    # Migrated once: opening again changes nothing.
    SqliteKeyStore(path, root_key).close()
    assert _stored_fingerprints(path, key_id) == [migrated]


def test_a_wrong_root_key_migrates_nothing(
    tmp_path: Path, root_key: RootKey, clock: ManualClock, fast_wrapping_keys: None
) -> None:
    path = tmp_path / "v3.db"
    key_id = _schema_three_store(path, root_key, clock)
    with pytest.raises(StoreError, match="root key does not match"):
        SqliteKeyStore(path, RootKey.generate())
    assert _stored_fingerprints(path, key_id) == [legacy_fingerprint(key_id, WEAK)]
    store = SqliteKeyStore(path, root_key)  # the right key migrates them
    store.close()
    assert _stored_fingerprints(path, key_id) == [
        root_key.upgrade_fingerprint(legacy_fingerprint(key_id, WEAK))
    ]

"""Backup and restore of the SQLite store: material stays wrapped, the root key must match."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.support.changes import fire, rotate
from tests.support.clocks import ManualClock

from kms_operator.crypto import wrapping
from kms_operator.errors import StoreError
from kms_operator.keys.service import KeyService, Timer
from kms_operator.store.backups import restore_store
from kms_operator.store.records import KeyRecord, Origin
from kms_operator.store.rootkey import RootKey
from kms_operator.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.unit

T0 = datetime(2026, 9, 1, tzinfo=UTC)
MATERIAL = bytes(range(7, 39))


@dataclass
class Populated:
    path: Path
    root_key: RootKey
    records: list[KeyRecord]
    blobs: list[tuple[bytes, dict[str, str], bytes]] = field(repr=False)
    materials: list[bytes] = field(repr=False)
    destroyed_wrapped: list[bytes] = field(repr=False)


def _store_files(path: Path) -> list[Path]:
    return [Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm")]


def _snapshot_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in _store_files(path) if p.exists()}


def _populate(path: Path, root_key: RootKey, wrapping_pair: tuple[bytes, bytes]) -> Populated:
    """Keys of every kind, some blobs, and one destroyed key; the store is left closed."""
    store = SqliteKeyStore(path, root_key)
    clock = ManualClock(T0)
    service = KeyService(store, clock=clock)
    kms = service.create_key("team-a", "kms", aliases=["alias/kms-key"])
    rotate(service, kms.key_id)
    service.create_key("team-b", "other")
    external = service.create_key("team-b", "external", origin=Origin.EXTERNAL)
    params = service.create_import_parameters(
        external.key_id,
        wrapping.WrappingAlgorithm.RSAES_OAEP_SHA_256,
        wrapping.WrappingKeySpec.RSA_2048,
    )
    service.import_material(
        external.key_id,
        params.token,
        wrapping.wrap_material(
            wrapping.WrappingAlgorithm.RSAES_OAEP_SHA_256, params.public_key_pem.encode(), MATERIAL
        ),
    )
    doomed = service.create_key("team-a", "doomed")
    blobs = []
    for namespace, name in (("team-a", "kms"), ("team-b", "other"), ("team-b", "external")):
        context = {"kms.cmk.dev/namespace": namespace, "purpose": "backup"}
        plaintext = f"{namespace}/{name}".encode()
        blobs.append(
            (
                service.encrypt(namespace, name, plaintext, context).ciphertext_blob,
                context,
                plaintext,
            )
        )
    rotate(service, kms.key_id)  # a blob of version 2 must still decrypt after the restore
    blobs.append((service.encrypt("team-a", "kms", b"v3", None).ciphertext_blob, {}, b"v3"))
    conn = sqlite3.connect(path)
    destroyed_wrapped = [
        bytes(r[0])
        for r in conn.execute(
            "SELECT wrapped FROM material WHERE key_id = ?", (str(doomed.key_id),)
        )
    ]
    conn.close()
    service.schedule_deletion(doomed.key_id, 7)
    clock.advance(timedelta(days=8))
    fire(service, doomed.key_id, Timer.DESTRUCTION)
    materials = [
        m
        for r in store.list_keys()
        for v in r.versions
        if (m := store.load_material(r.key_id, v.version)) is not None
    ]
    records = store.list_keys()
    store.close()
    return Populated(path, root_key, records, blobs, materials, destroyed_wrapped)


@pytest.fixture(scope="module")
def wrapping_pair() -> tuple[bytes, bytes]:
    return wrapping.generate_wrapping_key(wrapping.WrappingKeySpec.RSA_2048)


@pytest.fixture(scope="module")
def populated_template(
    tmp_path_factory: pytest.TempPathFactory, wrapping_pair: tuple[bytes, bytes]
) -> Populated:
    directory = tmp_path_factory.mktemp("backup-template")
    return _populate(directory / "kms.db", RootKey.generate(), wrapping_pair)


@pytest.fixture
def populated(populated_template: Populated, tmp_path: Path) -> Populated:
    path = tmp_path / "data" / "kms.db"
    path.parent.mkdir()
    shutil.copy2(populated_template.path, path)
    return Populated(
        path,
        populated_template.root_key,
        populated_template.records,
        populated_template.blobs,
        populated_template.materials,
        populated_template.destroyed_wrapped,
    )


@pytest.fixture
def opened(populated: Populated) -> Iterator[SqliteKeyStore]:
    store = SqliteKeyStore(populated.path, populated.root_key)
    yield store
    store.close()


def _assert_decrypts(path: Path, root_key: RootKey, populated: Populated) -> None:
    store = SqliteKeyStore(path, root_key)
    try:
        assert store.list_keys() == populated.records
        service = KeyService(store, clock=ManualClock(T0 + timedelta(days=30)))
        for blob, context, plaintext in populated.blobs:
            assert service.decrypt(blob, context).plaintext == plaintext
    finally:
        store.close()


# -- backup ----------------------------------------------------------------------------------


def test_backup_wipe_restore_decrypts_old_ciphertexts(
    populated: Populated, opened: SqliteKeyStore, tmp_path: Path
) -> None:
    backup = tmp_path / "backups" / "kms.backup"
    opened.backup(backup)
    opened.close()
    for path in _store_files(populated.path):
        path.unlink(missing_ok=True)
    assert not populated.path.exists()
    restore_store(backup, populated.path, populated.root_key)
    assert stat.S_IMODE(populated.path.stat().st_mode) == 0o600
    assert not list(populated.path.parent.glob("*.restoring*"))
    _assert_decrypts(populated.path, populated.root_key, populated)


def test_backup_has_mode_0600_and_no_raw_material(
    populated: Populated, opened: SqliteKeyStore, tmp_path: Path
) -> None:
    backup = tmp_path / "kms.backup"
    opened.backup(backup)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert not Path(f"{backup}.partial").exists()
    content = backup.read_bytes()
    assert content.startswith(b"SQLite format 3\x00")
    assert len(populated.materials) >= 4
    for material in populated.materials:
        assert material not in content
    # Destroyed material is not resurrected by a backup either.
    for wrapped in populated.destroyed_wrapped:
        assert wrapped not in content
    # A self-contained file: rollback journal, no WAL needed beside it.
    conn = sqlite3.connect(backup)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    assert not Path(f"{backup}-wal").exists()


class _ModeSpy:
    """Stands in for the store's connection to look at the backup file while it is written."""

    def __init__(self, conn: sqlite3.Connection, partial: Path) -> None:
        self._conn = conn
        self._partial = partial
        self.modes: list[int] = []

    def backup(self, target: sqlite3.Connection, **kwargs: Any) -> None:
        self.modes.append(stat.S_IMODE(self._partial.stat().st_mode))
        self._conn.backup(target, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_backup_is_never_readable_by_others_while_written(
    opened: SqliteKeyStore, tmp_path: Path
) -> None:
    backup = tmp_path / "kms.backup"
    real = opened._conn
    spy = _ModeSpy(real, Path(f"{backup}.partial"))
    old_umask = os.umask(0o022)
    opened._conn = spy  # type: ignore[assignment]
    try:
        opened.backup(backup)
    finally:
        opened._conn = real
        os.umask(old_umask)
    assert spy.modes == [0o600]
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600


def test_backup_replaces_an_older_backup_and_includes_recent_writes(
    populated: Populated, opened: SqliteKeyStore, tmp_path: Path
) -> None:
    backup = tmp_path / "kms.backup"
    backup.write_bytes(b"an old backup")
    backup.chmod(0o644)
    service = KeyService(opened, clock=ManualClock(T0 + timedelta(days=20)))
    late = service.create_key("team-c", "late")  # still in the WAL when backed up
    blob = service.encrypt("team-c", "late", b"late data").ciphertext_blob
    opened.backup(backup)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    target = tmp_path / "restored" / "kms.db"
    restore_store(backup, target, populated.root_key)
    store = SqliteKeyStore(target, populated.root_key)
    try:
        assert store.get(late.key_id) == late
        assert KeyService(store).decrypt(blob).plaintext == b"late data"
    finally:
        store.close()


# -- restore ---------------------------------------------------------------------------------


def test_restore_with_another_root_key_is_refused_without_touching_the_store(
    populated: Populated, tmp_path: Path, wrapping_pair: tuple[bytes, bytes]
) -> None:
    # A backup of another store, made under another root key.
    foreign_key = RootKey.generate()
    foreign = SqliteKeyStore(tmp_path / "foreign" / "kms.db", foreign_key)
    foreign_record = KeyService(foreign, clock=ManualClock(T0)).create_key("x", "foreign")
    backup = tmp_path / "foreign.backup"
    foreign.backup(backup)
    foreign.close()

    current = SqliteKeyStore(populated.path, populated.root_key)
    KeyService(current, clock=ManualClock(T0)).create_key("team-z", "in-the-wal")
    before = _snapshot_files(populated.path)  # includes a live -wal
    with pytest.raises(StoreError) as caught:
        restore_store(backup, populated.path, populated.root_key)
    assert "root key" in str(caught.value)
    assert _snapshot_files(populated.path) == before
    assert sorted(p.name for p in populated.path.parent.iterdir()) == sorted(before)
    records = current.list_keys()
    current.close()
    assert any(r.name == "in-the-wal" for r in records)
    assert all(r.key_id != foreign_record.key_id for r in records)
    _assert_decrypts_subset(populated)
    assert backup.exists()


def _assert_decrypts_subset(populated: Populated) -> None:
    store = SqliteKeyStore(populated.path, populated.root_key)
    try:
        service = KeyService(store, clock=ManualClock(T0 + timedelta(days=30)))
        for blob, context, plaintext in populated.blobs:
            assert service.decrypt(blob, context).plaintext == plaintext
    finally:
        store.close()


def test_restore_of_its_own_backup_with_the_wrong_root_key_is_refused(
    populated: Populated, opened: SqliteKeyStore, tmp_path: Path
) -> None:
    backup = tmp_path / "kms.backup"
    opened.backup(backup)
    opened.close()
    target = tmp_path / "elsewhere" / "kms.db"
    with pytest.raises(StoreError, match="root key"):
        restore_store(backup, target, RootKey.generate())
    assert not target.exists()
    assert not target.parent.exists() or not list(target.parent.iterdir())


@pytest.mark.parametrize("content", [None, b"", b"not a database at all" * 50])
def test_restore_of_a_missing_or_broken_backup_is_refused(
    populated: Populated, tmp_path: Path, content: bytes | None
) -> None:
    backup = tmp_path / "broken.backup"
    if content is not None:
        backup.write_bytes(content)
    before = _snapshot_files(populated.path)
    with pytest.raises(StoreError) as caught:
        restore_store(backup, populated.path, populated.root_key)
    assert str(backup) in str(caught.value)
    if content == b"":  # SQLite would take it for an empty database: every key lost
        assert "empty or not a kms-operator key store" in str(caught.value)
    assert _snapshot_files(populated.path) == before
    assert sorted(p.name for p in populated.path.parent.iterdir()) == sorted(before)


def test_restore_replaces_a_store_whose_wal_holds_other_data(
    populated: Populated, opened: SqliteKeyStore, tmp_path: Path
) -> None:
    """A stale -wal of the replaced store must never be replayed onto the restored file."""
    backup = tmp_path / "kms.backup"
    opened.backup(backup)
    service = KeyService(opened, clock=ManualClock(T0 + timedelta(days=20)))
    for i in range(5):
        service.create_key("team-w", f"after-backup-{i}")
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for path in _store_files(populated.path):
        if path.exists():
            shutil.copy2(path, crashed / path.name)  # the files as a killed process leaves them
    assert (crashed / "kms.db-wal").stat().st_size > 0
    target = crashed / "kms.db"
    restore_store(backup, target, populated.root_key)
    store = SqliteKeyStore(target, populated.root_key)
    try:
        assert store.list_keys() == populated.records
    finally:
        store.close()
    conn = sqlite3.connect(target)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


def test_restored_store_keeps_working(
    populated: Populated, opened: SqliteKeyStore, tmp_path: Path
) -> None:
    backup = tmp_path / "kms.backup"
    opened.backup(backup)
    opened.close()
    target = tmp_path / "restored" / "kms.db"
    restore_store(backup, target, populated.root_key)
    store = SqliteKeyStore(target, populated.root_key)
    try:
        service = KeyService(store, clock=ManualClock(T0 + timedelta(days=30)))
        kms = service.resolve("team-a", "alias/kms-key")
        rotated = rotate(service, kms.key_id)
        blob = service.encrypt("team-a", "kms", b"new").ciphertext_blob
        assert service.decrypt(blob).key_version == rotated.current_version
        for blob, context, plaintext in populated.blobs:
            assert service.decrypt(blob, context).plaintext == plaintext
        assert uuid.UUID(str(kms.key_id)) == kms.key_id
    finally:
        store.close()

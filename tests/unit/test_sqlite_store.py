"""The embedded SQLite key store: pragmas, schema version, root key check, records, shredding."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kms_operator.crypto import primitives
from kms_operator.errors import AliasConflict, StoreError
from kms_operator.store import sqlite as sqlite_store
from kms_operator.store.records import (
    ImportParameters,
    KeyRecord,
    KeyState,
    Origin,
    VersionRecord,
    VersionState,
)
from kms_operator.store.rootkey import RootKey
from kms_operator.store.sqlite import SCHEMA_VERSION, SqliteKeyStore

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(scope="module")
def private_pem() -> bytes:
    return primitives.generate_rsa_private_key_pem(2048)


@pytest.fixture
def root_key() -> RootKey:
    return RootKey.generate()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "kms.db"


@pytest.fixture
def store(db_path: Path, root_key: RootKey) -> Iterator[SqliteKeyStore]:
    opened = SqliteKeyStore(db_path, root_key)
    yield opened
    opened.close()


def _record(
    namespace: str = "team-a",
    name: str = "key",
    *,
    origin: Origin = Origin.KMS,
    versions: int = 1,
    aliases: tuple[str, ...] = (),
    fingerprints: bool = False,
) -> KeyRecord:
    state = VersionState.ENABLED
    return KeyRecord(
        key_id=uuid.uuid4(),
        namespace=namespace,
        name=name,
        origin=origin,
        created_at=T0,
        versions=tuple(
            VersionRecord(
                n,
                T0 + timedelta(days=n - 1),
                state,
                fingerprint=primitives.random_bytes(32) if fingerprints else None,
                imported_at=T0 if fingerprints else None,
            )
            for n in range(1, versions + 1)
        ),
        aliases=aliases,
    )


def _materials(record: KeyRecord) -> dict[int, bytes]:
    return {v.version: primitives.random_bytes(32) for v in record.versions}


def _files(db_path: Path) -> dict[str, bytes]:
    """The .db, -wal and -shm files as they are on disk right now."""
    found = {}
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = Path(f"{db_path}{suffix}")
        if path.exists():
            found[path.name] = path.read_bytes()
    return found


def _where(needle: bytes, db_path: Path) -> list[str]:
    return [name for name, content in _files(db_path).items() if needle in content]


def _raw(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(db_path)


def _count(db_path: Path, sql: str, *args: object) -> int:
    conn = _raw(db_path)
    try:
        return int(conn.execute(sql, args).fetchone()[0])
    finally:
        conn.close()


# -- opening ---------------------------------------------------------------------------------


def test_pragmas(store: SqliteKeyStore, db_path: Path) -> None:
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    other = _raw(db_path)  # WAL is a property of the file: every connection sees it
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()


def test_schema_version_is_recorded(store: SqliteKeyStore, db_path: Path) -> None:
    assert SCHEMA_VERSION == len(sqlite_store.MIGRATIONS) >= 1
    assert store._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert _count(db_path, "PRAGMA user_version") == SCHEMA_VERSION


def test_reopen_keeps_data_and_schema(db_path: Path, root_key: RootKey) -> None:
    first = SqliteKeyStore(db_path, root_key)
    record = _record()
    material = _materials(record)
    first.create(record, material)
    first.close()
    second = SqliteKeyStore(db_path, root_key)
    try:
        assert second.get(record.key_id) == record
        assert second.load_material(record.key_id, 1) == material[1]
        assert second._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        second.close()


def test_newer_schema_is_refused(db_path: Path, root_key: RootKey) -> None:
    SqliteKeyStore(db_path, root_key).close()
    conn = _raw(db_path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError) as caught:
        SqliteKeyStore(db_path, root_key)
    message = str(caught.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert "newer" in message
    assert "upgrade kms-operator" in message
    assert str(db_path) in message
    assert _count(db_path, "PRAGMA user_version") == SCHEMA_VERSION + 1


def test_another_root_key_is_refused(db_path: Path, root_key: RootKey) -> None:
    store = SqliteKeyStore(db_path, root_key)
    record = _record()
    material = _materials(record)
    store.create(record, material)
    store.close()
    before = db_path.read_bytes()
    with pytest.raises(StoreError) as caught:
        SqliteKeyStore(db_path, RootKey.generate())
    message = str(caught.value)
    assert "root key does not match" in message
    assert "another root key" in message
    assert str(db_path) in message
    assert db_path.read_bytes() == before
    reopened = SqliteKeyStore(db_path, root_key)  # the right key still opens it
    try:
        assert reopened.load_material(record.key_id, 1) == material[1]
    finally:
        reopened.close()


def test_a_refused_open_leaves_no_connection(db_path: Path, root_key: RootKey) -> None:
    SqliteKeyStore(db_path, root_key).close()
    opened: list[sqlite3.Connection] = []
    real_connect = sqlite3.connect

    def spy(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)  # type: ignore[arg-type]
        opened.append(conn)
        return conn

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sqlite_store.sqlite3, "connect", spy)
        with pytest.raises(StoreError):
            SqliteKeyStore(db_path, RootKey.generate())
    assert len(opened) == 1
    with pytest.raises(sqlite3.ProgrammingError):  # closed
        opened[0].execute("SELECT 1")


def test_a_file_that_is_not_a_store_is_refused(db_path: Path, root_key: RootKey) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not a database, " * 100)
    with pytest.raises(StoreError, match="cannot open the key store"):
        SqliteKeyStore(db_path, root_key)


def test_repr_names_the_file_only(store: SqliteKeyStore, db_path: Path) -> None:
    assert repr(store) == f"SqliteKeyStore({str(db_path)!r})"


# -- records ---------------------------------------------------------------------------------


def test_create_get_list_round_trip(store: SqliteKeyStore) -> None:
    full = KeyRecord(
        key_id=uuid.uuid4(),
        namespace="team-a",
        name="payments",
        origin=Origin.KMS,
        created_at=T0,
        versions=(
            VersionRecord(1, T0, VersionState.ENABLED),
            VersionRecord(2, T0 + timedelta(days=90), VersionState.ENABLED),
        ),
        description="Zahlungen — 支払い",
        enabled=False,
        aliases=("alias/pay", "alias/payments/v2"),
        rotation_period_days=90,
        last_rotated_at=T0 + timedelta(days=90),
        next_rotation_at=T0 + timedelta(days=180),
        deletion_requested_at=T0 + timedelta(days=100),
        deletion_date=T0 + timedelta(days=130),
        default_service=None,
    )
    external = _record("team-b", "imported", origin=Origin.EXTERNAL, fingerprints=True)
    default = _record("team-a", "default-datakeys", aliases=("alias/kms/datakeys",)).evolve(
        default_service="datakeys"
    )
    store.create(full, _materials(full))
    store.create(external, {1: primitives.random_bytes(32)})
    store.create(default, _materials(default))
    assert store.get(full.key_id) == full
    assert store.get(external.key_id) == external
    assert store.get(default.key_id) == default
    assert store.get(uuid.uuid4()) is None
    listed = store.list_keys()
    assert sorted(r.key_id for r in listed) == sorted(r.key_id for r in (full, external, default))
    assert {r.key_id: r for r in listed}[full.key_id] == full
    got = store.get(full.key_id)
    assert got is not None
    assert got.state is KeyState.PENDING_DELETION
    assert got.created_at.tzinfo is not None


def test_create_without_material_for_an_external_key(store: SqliteKeyStore) -> None:
    record = _record(origin=Origin.EXTERNAL).evolve(
        versions=(VersionRecord(1, T0, VersionState.PENDING_IMPORT),)
    )
    store.create(record, {})
    assert store.get(record.key_id) == record
    assert store.load_material(record.key_id, 1) is None
    assert store.get(record.key_id).state is KeyState.PENDING_IMPORT  # type: ignore[union-attr]


def test_update_round_trip_with_material(store: SqliteKeyStore) -> None:
    record = _record(aliases=("alias/one",))
    material = _materials(record)
    store.create(record, material)
    second = primitives.random_bytes(32)
    rotated = record.evolve(
        versions=(*record.versions, VersionRecord(2, T0 + timedelta(days=1), VersionState.ENABLED)),
        last_rotated_at=T0 + timedelta(days=1),
        aliases=("alias/two",),
        description="rotated",
    )
    store.update(rotated, add_material={2: second})
    assert store.get(record.key_id) == rotated
    assert store.load_material(record.key_id, 1) == material[1]
    assert store.load_material(record.key_id, 2) == second
    assert store.load_material(record.key_id, 3) is None


def test_update_drops_material(store: SqliteKeyStore, db_path: Path) -> None:
    record = _record(origin=Origin.EXTERNAL, versions=2, fingerprints=True)
    store.create(record, _materials(record))
    wrapped = _wrapped(db_path, record.key_id, 1)
    dropped = record.evolve(
        versions=(
            VersionRecord(
                1, T0, VersionState.PENDING_IMPORT, fingerprint=record.versions[0].fingerprint
            ),
            record.versions[1],
        )
    )
    store.update(dropped, drop_material=[1])
    assert store.get(record.key_id) == dropped
    assert store.load_material(record.key_id, 1) is None
    assert store.load_material(record.key_id, 2) is not None
    assert _where(wrapped, db_path) == []
    # The fingerprint stays, so only the same material can come back.
    assert store.get(record.key_id).versions[0].fingerprint == record.versions[0].fingerprint  # type: ignore[union-attr]


def test_update_of_an_unknown_key_is_refused(store: SqliteKeyStore) -> None:
    record = _record()
    with pytest.raises(StoreError):
        store.update(record)
    assert store.get(record.key_id) is None


def test_material_for_a_version_the_record_lacks_is_refused(store: SqliteKeyStore) -> None:
    record = _record()
    with pytest.raises(StoreError):
        store.create(record, {1: primitives.random_bytes(32), 2: primitives.random_bytes(32)})
    assert store.get(record.key_id) is None  # atomic: nothing of it was kept
    assert store.list_keys() == []


def test_create_is_atomic_on_conflict(store: SqliteKeyStore, db_path: Path) -> None:
    first = _record(aliases=("alias/taken",))
    store.create(first, _materials(first))
    second = _record(name="other", aliases=("alias/free", "alias/taken"))
    with pytest.raises(AliasConflict):
        store.create(second, _materials(second))
    assert store.get(second.key_id) is None
    assert (
        _count(db_path, "SELECT count(*) FROM versions WHERE key_id = ?", str(second.key_id)) == 0
    )
    assert (
        _count(db_path, "SELECT count(*) FROM material WHERE key_id = ?", str(second.key_id)) == 0
    )
    assert _count(db_path, "SELECT count(*) FROM aliases WHERE alias = 'alias/free'") == 0


# -- aliases and names -----------------------------------------------------------------------


def test_alias_is_unique_per_namespace(store: SqliteKeyStore) -> None:
    first = _record("ns1", "a", aliases=("alias/shared",))
    store.create(first, _materials(first))
    clash = _record("ns1", "b", aliases=("alias/shared",))
    with pytest.raises(AliasConflict) as caught:
        store.create(clash, _materials(clash))
    assert "ns1/b" in str(caught.value)
    elsewhere = _record("ns2", "a", aliases=("alias/shared",))
    store.create(elsewhere, _materials(elsewhere))
    assert store.get(elsewhere.key_id) == elsewhere
    assert store.get(first.key_id) == first


def test_alias_conflict_on_update_changes_nothing(store: SqliteKeyStore) -> None:
    first = _record("ns1", "a", aliases=("alias/one",))
    second = _record("ns1", "b", aliases=("alias/two",))
    store.create(first, _materials(first))
    store.create(second, _materials(second))
    with pytest.raises(AliasConflict):
        store.update(second.evolve(aliases=("alias/one",), description="changed"))
    assert store.get(second.key_id) == second
    assert store.get(first.key_id) == first


def test_an_alias_moves_between_keys_of_a_namespace(store: SqliteKeyStore) -> None:
    first = _record("ns1", "a", aliases=("alias/moving",))
    second = _record("ns1", "b")
    store.create(first, _materials(first))
    store.create(second, _materials(second))
    store.update(first.evolve(aliases=()))
    store.update(second.evolve(aliases=("alias/moving",)))
    assert store.get(second.key_id).aliases == ("alias/moving",)  # type: ignore[union-attr]


def test_one_live_key_per_namespace_and_name(store: SqliteKeyStore) -> None:
    first = _record("ns1", "same")
    store.create(first, _materials(first))
    twin = _record("ns1", "same")
    with pytest.raises(AliasConflict, match="already exists"):
        store.create(twin, _materials(twin))
    other_ns = _record("ns2", "same")
    store.create(other_ns, _materials(other_ns))
    store.destroy(_destroyed(first))
    again = _record("ns1", "same")  # the name is free once the old key is a tombstone
    store.create(again, _materials(again))
    assert store.get(again.key_id) == again


# -- material at rest ------------------------------------------------------------------------


def _wrapped(db_path: Path, key_id: uuid.UUID, version: int) -> bytes:
    conn = _raw(db_path)
    try:
        row = conn.execute(
            "SELECT wrapped FROM material WHERE key_id = ? AND version = ?",
            (str(key_id), version),
        ).fetchone()
    finally:
        conn.close()
    assert row is not None
    return bytes(row[0])


def test_material_is_stored_wrapped(store: SqliteKeyStore, db_path: Path) -> None:
    records = [_record(name=f"k{i}", versions=3) for i in range(3)]
    materials = {}
    for record in records:
        materials[record.key_id] = _materials(record)
        store.create(record, materials[record.key_id])
    assert Path(f"{db_path}-wal").exists()  # the writes are still in the WAL
    for record in records:
        for version, material in materials[record.key_id].items():
            assert _where(material, db_path) == []
            wrapped = _wrapped(db_path, record.key_id, version)
            assert material not in wrapped
            assert _where(wrapped, db_path) != []
            assert store.load_material(record.key_id, version) == material
    store.close()
    for material_set in materials.values():
        for material in material_set.values():
            assert _where(material, db_path) == []


def test_wrapped_material_is_bound_to_its_row(store: SqliteKeyStore, db_path: Path) -> None:
    """Swapping wrapped material between keys (a tampered file) does not unwrap."""
    a, b = _record(name="a"), _record(name="b")
    store.create(a, _materials(a))
    store.create(b, _materials(b))
    wrapped_a = _wrapped(db_path, a.key_id, 1)
    conn = _raw(db_path)
    conn.execute("UPDATE material SET wrapped = ? WHERE key_id = ?", (wrapped_a, str(b.key_id)))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="does not unwrap"):
        store.load_material(b.key_id, 1)


def _destroyed(record: KeyRecord) -> KeyRecord:
    """What the lifecycle service hands the store (KeyService.run_due, destroying a key)."""
    return record.evolve(
        destroyed_at=T0 + timedelta(days=40),
        enabled=False,
        aliases=(),
        versions=tuple(
            VersionRecord(v.version, v.created_at, VersionState.DESTROYED) for v in record.versions
        ),
    )


@pytest.mark.parametrize("as_the_service_does", [True, False])
def test_destroy_shreds_everything(
    store: SqliteKeyStore,
    db_path: Path,
    private_pem: bytes,
    as_the_service_does: bool,
) -> None:
    victim = _record(
        "ns1", "victim", origin=Origin.EXTERNAL, versions=3, aliases=("alias/v",), fingerprints=True
    )
    bystander = _record("ns1", "bystander", versions=2, aliases=("alias/b",))
    victim_material = _materials(victim)
    bystander_material = _materials(bystander)
    store.create(victim, victim_material)
    store.create(bystander, bystander_material)
    params = _params(victim.key_id, "tok-victim")
    store.save_import_parameters(params, private_pem, now=T0)
    wrapped = [_wrapped(db_path, victim.key_id, n) for n in (1, 2, 3)]
    fingerprints = [v.fingerprint for v in victim.versions]
    wrapped_private = _wrapped_private_key(db_path, "tok-victim")
    for needle in (*wrapped, *fingerprints, wrapped_private):
        assert needle is not None
        assert _where(needle, db_path) != []

    # The service clears the fingerprints itself; the store must also do it when handed
    # a record that still carries them (the KeyStore contract says destroy removes them).
    store.destroy(
        _destroyed(victim)
        if as_the_service_does
        else victim.evolve(destroyed_at=T0 + timedelta(days=40), aliases=())
    )

    tombstone = store.get(victim.key_id)
    assert tombstone is not None
    assert tombstone.state is KeyState.DESTROYED
    assert tombstone.aliases == ()
    assert [v.version for v in tombstone.versions] == [1, 2, 3]
    assert all(v.fingerprint is None for v in tombstone.versions)
    assert all(v.state is VersionState.DESTROYED for v in tombstone.versions)
    for n in (1, 2, 3):
        assert store.load_material(victim.key_id, n) is None
    assert store.load_import_parameters("tok-victim") is None
    key = str(victim.key_id)
    assert _count(db_path, "SELECT count(*) FROM material WHERE key_id = ?", key) == 0
    assert _count(db_path, "SELECT count(*) FROM aliases WHERE key_id = ?", key) == 0
    assert (
        _count(
            db_path, "SELECT count(*) FROM versions WHERE key_id = ? AND fingerprint IS NULL", key
        )
        == 3
    )
    # Overwritten, not flagged: no copy left in the file or its WAL.
    for needle in (*wrapped, *fingerprints, wrapped_private):
        assert needle is not None
        assert _where(needle, db_path) == [], needle.hex()
    assert Path(f"{db_path}-wal").stat().st_size == 0
    # The other key is untouched.
    assert store.get(bystander.key_id) == bystander
    for n, material in bystander_material.items():
        assert store.load_material(bystander.key_id, n) == material
    store.close()
    for needle in (*wrapped, *fingerprints, wrapped_private):
        assert needle is not None
        assert _where(needle, db_path) == []
    assert _integrity_ok(db_path)


def _integrity_ok(db_path: Path) -> bool:
    conn = _raw(db_path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


def test_destroy_after_many_writes_leaves_no_copy(store: SqliteKeyStore, db_path: Path) -> None:
    """Enough rows to spread material over several pages and page splits."""
    records = [_record(name=f"k{i:03d}", versions=4) for i in range(60)]
    for record in records:
        store.create(record, _materials(record))
    victims = records[::7]
    wrapped = [_wrapped(db_path, r.key_id, n) for r in victims for n in (1, 2, 3, 4)]
    for victim in victims:
        store.destroy(_destroyed(victim))
    for needle in wrapped:
        assert _where(needle, db_path) == []
    assert _integrity_ok(db_path)


# -- import parameters -----------------------------------------------------------------------


def _params(key_id: uuid.UUID, token: str, expires_at: datetime | None = None) -> ImportParameters:
    return ImportParameters(
        token=token,
        key_id=key_id,
        wrapping_algorithm="RSA_AES_KEY_WRAP_SHA_256",
        wrapping_key_spec="RSA_2048",
        public_key_pem="-----BEGIN PUBLIC KEY-----\nMIIBIjANBg...\n-----END PUBLIC KEY-----\n",
        expires_at=expires_at or T0 + timedelta(days=1),
    )


def _wrapped_private_key(db_path: Path, token: str) -> bytes:
    conn = _raw(db_path)
    try:
        row = conn.execute(
            "SELECT wrapped_private_key FROM import_parameters WHERE token = ?", (token,)
        ).fetchone()
    finally:
        conn.close()
    assert row is not None
    return bytes(row[0])


def test_import_parameters_round_trip(
    store: SqliteKeyStore, db_path: Path, private_pem: bytes
) -> None:
    record = _record(origin=Origin.EXTERNAL)
    store.create(record, {})
    params = _params(record.key_id, "kmsit1_abc")
    store.save_import_parameters(params, private_pem, now=T0)
    loaded = store.load_import_parameters("kmsit1_abc")
    assert loaded == (params, private_pem)
    assert store.load_import_parameters("kmsit1_other") is None
    # The private key is stored wrapped: neither its PEM text nor its base64 body is in the file.
    body = b"".join(private_pem.splitlines()[1:-1])
    for needle in (private_pem, body[:64], body[-64:], b"PRIVATE KEY"):
        assert _where(needle, db_path) == []
    store.close()
    for needle in (private_pem, body[:64], b"PRIVATE KEY"):
        assert _where(needle, db_path) == []


def test_expired_import_parameters_are_pruned(store: SqliteKeyStore, private_pem: bytes) -> None:
    record = _record(origin=Origin.EXTERNAL)
    store.create(record, {})
    store.save_import_parameters(_params(record.key_id, "old", T0), private_pem, now=T0)
    valid = _params(record.key_id, "valid", T0 + timedelta(days=3))
    store.save_import_parameters(valid, private_pem, now=T0)
    later = T0 + timedelta(days=1)
    new = _params(record.key_id, "new", T0 + timedelta(days=2))
    store.save_import_parameters(new, private_pem, now=later)
    assert store.load_import_parameters("old") is None  # expired: pruned
    assert store.load_import_parameters("valid") is not None  # still valid: kept
    assert store.load_import_parameters("new") is not None


# -- failures are StoreError (issue 8, item 7) -----------------------------------------------


def _writes(store: SqliteKeyStore, existing: KeyRecord, private_pem: bytes) -> dict[str, Any]:
    """One call of every write method, on a store holding ``existing``."""
    fresh = _record(name="fresh")
    return {
        "create": lambda: store.create(fresh, _materials(fresh)),
        "update": lambda: store.update(existing.evolve(description="changed")),
        "update+drop": lambda: store.update(existing, drop_material=[1]),
        "destroy": lambda: store.destroy(_destroyed(existing)),
        "save_import_parameters": lambda: store.save_import_parameters(
            _params(existing.key_id, "tok"), private_pem, now=T0
        ),
        "save_elapsed": lambda: store.save_elapsed(10**9),
    }


@pytest.mark.parametrize(
    "method",
    ["create", "update", "update+drop", "destroy", "save_import_parameters", "save_elapsed"],
)
def test_a_read_only_database_fails_every_write_with_store_error(
    store: SqliteKeyStore, private_pem: bytes, method: str
) -> None:
    existing = _record()
    store.create(existing, _materials(existing))
    store._conn.execute("PRAGMA query_only = 1")  # every write now fails inside SQLite
    with pytest.raises(StoreError) as caught:
        _writes(store, existing, private_pem)[method]()
    assert caught.value.retryable
    assert "readonly" in caught.value.message
    assert not isinstance(caught.value.__cause__, sqlite3.Error)
    store._conn.execute("PRAGMA query_only = 0")
    # Nothing was kept, and the connection is not stuck in a transaction.
    assert not store._conn.in_transaction
    assert store.list_keys() == [existing]
    _writes(store, existing, private_pem)[method]()


def test_a_full_disk_is_a_store_error_and_the_store_recovers(store: SqliteKeyStore) -> None:
    (pages,) = store._conn.execute("PRAGMA page_count").fetchone()
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    records = [_record(name=f"k{i}", versions=4) for i in range(200)]
    with pytest.raises(StoreError, match="full"):
        for record in records:
            store.create(record, _materials(record))
    kept = store.list_keys()
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    late = _record(name="after-the-disk-was-freed")
    store.create(late, _materials(late))
    assert store.get(late.key_id) == late
    assert len(store.list_keys()) == len(kept) + 1


class _FailingCommit:
    """The store's connection, except that COMMIT fails as a locked database does."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database is locked")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_a_failed_commit_rolls_back_and_leaves_the_connection_usable(
    store: SqliteKeyStore,
) -> None:
    real = store._conn
    record = _record()
    store._conn = _FailingCommit(real)  # type: ignore[assignment]
    try:
        with pytest.raises(StoreError, match="database is locked"):
            store.create(record, _materials(record))
    finally:
        store._conn = real
    assert not real.in_transaction
    assert store.get(record.key_id) is None
    store.create(record, _materials(record))
    assert store.get(record.key_id) == record


def test_reads_of_a_broken_connection_are_store_errors(store: SqliteKeyStore) -> None:
    record = _record()
    store.create(record, _materials(record))
    store._conn.close()
    for read in (
        store.list_keys,
        lambda: store.get(record.key_id),
        lambda: store.load_material(record.key_id, 1),
        lambda: store.load_import_parameters("tok"),
        store.load_elapsed,
        lambda: store.save_elapsed(1),
    ):
        with pytest.raises(StoreError, match="ProgrammingError"):
            read()


def test_a_store_that_cannot_be_created_is_a_store_error(tmp_path: Path, root_key: RootKey) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    with pytest.raises(StoreError, match="cannot open the key store"):
        SqliteKeyStore(blocker / "kms.db", root_key)


# -- shredding with a reader holding the WAL (issue 8, item 13) ------------------------------


def _hold_a_read_transaction(db_path: Path) -> sqlite3.Connection:
    """A second connection inside a read transaction, as a running backup holds one."""
    reader = sqlite3.connect(db_path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM material").fetchone()
    return reader


def _shred_row(db_path: Path) -> int:
    return _count(db_path, "SELECT count(*) FROM meta WHERE name = 'shred-pending'")


@pytest.mark.parametrize("how", ["destroy", "drop material"])
def test_shredding_waits_for_a_reader_and_is_remembered_across_restarts(
    db_path: Path, root_key: RootKey, how: str
) -> None:
    store = SqliteKeyStore(db_path, root_key, shred_backoff=(0, 0))
    bystander = _record(name="bystander")
    store.create(bystander, _materials(bystander))
    victim = _record(name="victim", origin=Origin.EXTERNAL, versions=2, fingerprints=True)
    store.create(victim, _materials(victim))
    wrapped = [_wrapped(db_path, victim.key_id, n) for n in (1, 2)]
    reader = _hold_a_read_transaction(db_path)
    try:
        if how == "destroy":
            store.destroy(_destroyed(victim))
        else:
            store.update(
                victim.evolve(
                    versions=tuple(
                        VersionRecord(v.version, v.created_at, VersionState.PENDING_IMPORT)
                        for v in victim.versions
                    )
                ),
                drop_material=[1, 2],
            )
        # The reader keeps the old frames alive: the checkpoint cannot complete.
        assert store.shred_pending
        assert _shred_row(db_path) == 1
        assert any(_where(needle, db_path) for needle in wrapped)
        assert store.complete_shred() is False
        store.save_elapsed(5)  # a later write retries it, and fails the same way
        assert store.shred_pending
        # A restart while the reader is still open: the promise is still on file.
        store.close()
        store = SqliteKeyStore(db_path, root_key, shred_backoff=())
        assert store.shred_pending
        assert _shred_row(db_path) == 1
    finally:
        reader.close()
    assert store.complete_shred() is True
    assert not store.shred_pending
    assert _shred_row(db_path) == 0
    for needle in wrapped:
        assert _where(needle, db_path) == []
    assert Path(f"{db_path}-wal").stat().st_size == 0
    assert store.get(bystander.key_id) == bystander
    store.close()


def test_a_pending_shred_is_completed_when_the_store_opens(
    db_path: Path, root_key: RootKey
) -> None:
    store = SqliteKeyStore(db_path, root_key, shred_backoff=())
    victim = _record(name="victim", versions=3)
    store.create(victim, _materials(victim))
    wrapped = [_wrapped(db_path, victim.key_id, n) for n in (1, 2, 3)]
    reader = _hold_a_read_transaction(db_path)
    store.destroy(_destroyed(victim))
    assert store.shred_pending
    reader.close()
    # Killed now: the pending row is all that says a shred is owed. (A close would checkpoint
    # on its own, so the old connection stays open, unused, as a killed process leaves it.)
    killed = store._conn
    assert any(_where(needle, db_path) for needle in wrapped)
    reopened = SqliteKeyStore(db_path, root_key, shred_backoff=())
    try:
        assert not reopened.shred_pending
        assert _shred_row(db_path) == 0
        for needle in wrapped:
            assert _where(needle, db_path) == []
    finally:
        reopened.close()
        killed.close()


def test_checkpoint_retries_with_backoff_until_the_reader_leaves(
    db_path: Path, root_key: RootKey
) -> None:
    reader: list[sqlite3.Connection] = []
    pauses: list[float] = []

    def sleep(seconds: float) -> None:  # the reader finishes during the third pause
        pauses.append(seconds)
        if len(pauses) == 3:
            reader.pop().close()

    store = SqliteKeyStore(db_path, root_key, shred_backoff=(0.01, 0.02, 0.05, 0.1), sleep=sleep)
    victim = _record(name="victim")
    store.create(victim, _materials(victim))
    wrapped = _wrapped(db_path, victim.key_id, 1)
    reader.append(_hold_a_read_transaction(db_path))
    store.destroy(_destroyed(victim))
    assert pauses == [0.01, 0.02, 0.05]
    assert not store.shred_pending
    assert _where(wrapped, db_path) == []
    store.close()

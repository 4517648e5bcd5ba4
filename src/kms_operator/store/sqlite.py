"""The embedded store: one SQLite file (WAL, ``synchronous=FULL``, ``secure_delete``).

Every version's material is kept wrapped under the root key in its own table, so destroying a
key deletes rows (overwritten with zeros by ``secure_delete``) and then truncates the WAL, and
no copy of the wrapped material stays in the file or its journal. A reader holding the WAL (a
running backup) makes that checkpoint "busy": it is retried with a bounded backoff, and a
``shred-pending`` row, written in the destroying transaction, keeps the promise across restarts
until a checkpoint completed (later writes, :meth:`SqliteKeyStore.complete_shred` and the next
open retry it).

Each public method is one ``BEGIN IMMEDIATE`` transaction; :data:`fault_hook` lets crash tests
kill the process between statements to prove it. Every failure of SQLite or the file system
(disk full, database locked, read-only file) is raised as the retryable
:class:`~kms_operator.errors.StoreError`, never as a raw ``sqlite3`` exception.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from kms_operator.errors import AliasConflict, StoreError

from .records import (
    ImportParameters,
    KeyRecord,
    KeySpec,
    KeyUsage,
    Origin,
    VersionRecord,
    VersionState,
)
from .rootkey import RootKey

#: Called with a point name inside transactions. Only crash-safety tests set it.
fault_hook: Callable[[str], None] | None = None

log = logging.getLogger(__name__)

_CHECK_LABEL = "root-key-check"
_CHECK_VALUE = b"kms-operator root key check"
#: meta rows: the elapsed-time counter (microseconds), a destruction whose checkpoint has not
#: completed yet, fingerprints still in their v1 form (set by migration 4, cleared at open).
_ELAPSED = "elapsed-us"
_SHRED_PENDING = "shred-pending"
_FINGERPRINTS_V1 = "fingerprints-v1"
_BUSY_TIMEOUT_MS = 30_000
#: Pauses between checkpoint attempts after a destruction, in the caller's thread (~1 s).
DEFAULT_SHRED_BACKOFF: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.6)

_P = ParamSpec("_P")
_R = TypeVar("_R")

# Each entry migrates the schema from version i to i + 1; append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE keys (
        key_id TEXT PRIMARY KEY,
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        origin TEXT NOT NULL,
        key_spec TEXT NOT NULL,
        key_usage TEXT NOT NULL,
        description TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        rotation_period_days INTEGER,
        last_rotated_at TEXT,
        next_rotation_at TEXT,
        deletion_requested_at TEXT,
        deletion_date TEXT,
        destroyed_at TEXT,
        default_service TEXT,
        created_at TEXT NOT NULL,
        state TEXT NOT NULL
    );
    CREATE UNIQUE INDEX keys_binding ON keys (namespace, name) WHERE destroyed_at IS NULL;
    CREATE TABLE versions (
        key_id TEXT NOT NULL REFERENCES keys (key_id),
        version INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        state TEXT NOT NULL,
        fingerprint BLOB,
        imported_at TEXT,
        expires_at TEXT,
        PRIMARY KEY (key_id, version)
    );
    CREATE TABLE material (
        key_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        wrapped BLOB NOT NULL,
        PRIMARY KEY (key_id, version),
        FOREIGN KEY (key_id, version) REFERENCES versions (key_id, version)
    );
    CREATE TABLE aliases (
        namespace TEXT NOT NULL,
        alias TEXT NOT NULL,
        key_id TEXT NOT NULL REFERENCES keys (key_id),
        PRIMARY KEY (namespace, alias)
    );
    CREATE TABLE import_parameters (
        token TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES keys (key_id),
        wrapping_algorithm TEXT NOT NULL,
        wrapping_key_spec TEXT NOT NULL,
        public_key_pem TEXT NOT NULL,
        wrapped_private_key BLOB NOT NULL,
        expires_at TEXT NOT NULL
    );
    """,
    # 2: keys are bound to the UIDs of their namespace and object, and may be detached (a
    # namespace re-created with the same name never inherits the old tenant's keys).
    """
    ALTER TABLE keys ADD COLUMN namespace_uid TEXT;
    ALTER TABLE keys ADD COLUMN object_uid TEXT;
    ALTER TABLE keys ADD COLUMN detached_at TEXT;
    DROP INDEX keys_binding;
    CREATE UNIQUE INDEX keys_binding ON keys (namespace, name)
        WHERE destroyed_at IS NULL AND detached_at IS NULL;
    """,
    # 3: destruction also waits on elapsed time (monotonic, persisted): the counter, and its
    # value at each deletion request. Keys already pending deletion restart their window on
    # that measure from the counter's value now (later, never earlier, than their date).
    """
    ALTER TABLE keys ADD COLUMN deletion_requested_elapsed INTEGER;
    INSERT OR IGNORE INTO meta (name, value) VALUES ('elapsed-us', 0);
    UPDATE keys SET deletion_requested_elapsed = (SELECT value FROM meta WHERE name = 'elapsed-us')
        WHERE deletion_date IS NOT NULL AND destroyed_at IS NULL;
    """,
    # 4: fingerprints keyed from the root key. SQL cannot compute them: this flags the v1
    # fingerprints, which the first open with the root key rewrites (one transaction).
    """
    INSERT OR IGNORE INTO meta (name, value) VALUES ('fingerprints-v1', 1);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def _fault(point: str) -> None:
    if fault_hook is not None:
        fault_hook(point)


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _store_errors(
    method: Callable[Concatenate[SqliteKeyStore, _P], _R],
) -> Callable[Concatenate[SqliteKeyStore, _P], _R]:
    """Raise every SQLite or file-system failure of ``method`` as the store's own error."""

    @functools.wraps(method)
    def wrapper(self: SqliteKeyStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"the key store {self.path} failed in {method.__name__}: "
                f"{type(exc).__name__}: {exc}"
            ) from None

    return wrapper


class SqliteKeyStore:
    """A :class:`~kms_operator.store.base.KeyStore` on one SQLite file.

    ``shred_backoff`` are the pauses between checkpoint attempts after a destruction (tests
    pass ``()``: one attempt, no sleep).
    """

    def __init__(
        self,
        path: Path,
        root_key: RootKey,
        *,
        shred_backoff: Sequence[float] = DEFAULT_SHRED_BACKOFF,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path = path
        self._root_key = root_key
        self._lock = threading.RLock()
        self._shred_backoff = tuple(shred_backoff)
        self._sleep = sleep
        self._shred_pending = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30
            )
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                self._conn.execute("PRAGMA secure_delete=ON")
                self._conn.execute("PRAGMA foreign_keys=ON")
                self._migrate()
                self._check_root_key()
                self._upgrade_fingerprints()
                # A destruction whose checkpoint did not complete (killed, or a reader held the
                # WAL) left old pages (wrapped material) in the file or the WAL: finish it now.
                # Stores of older versions kept no pending row: one attempt in every case.
                self._shred_pending = self._meta(_SHRED_PENDING) is not None
                if self._shred_pending:
                    self._checkpoint()
                else:
                    self._checkpoint_once()
            except BaseException:
                self._conn.close()  # a refused store keeps no handle on the file
                raise
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the key store {path}: {exc}") from None

    def __repr__(self) -> str:
        return f"SqliteKeyStore({str(self.path)!r})"

    # -- schema --------------------------------------------------------------------------

    def _migrate(self) -> None:
        (current,) = self._conn.execute("PRAGMA user_version").fetchone()
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"the store {self.path} has schema version {current}, newer than this "
                f"kms-operator understands ({SCHEMA_VERSION}); upgrade kms-operator"
            )
        for number in range(current, SCHEMA_VERSION):
            with self._transaction() as conn:
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number + 1}")

    def _check_root_key(self) -> None:
        row = self._conn.execute(
            "SELECT value FROM meta WHERE name = ?", (_CHECK_LABEL,)
        ).fetchone()
        if row is None:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT INTO meta (name, value) VALUES (?, ?)",
                    (_CHECK_LABEL, self._root_key.wrap_secret(_CHECK_LABEL, _CHECK_VALUE)),
                )
            return
        try:
            self._root_key.unwrap_secret(_CHECK_LABEL, row[0])
        except StoreError:
            raise StoreError(
                f"the root key does not match the store {self.path}: it was created with "
                "another root key (restore the original root key Secret)"
            ) from None

    def _upgrade_fingerprints(self) -> None:
        """v1 fingerprints (HMAC keyed by the key id) become v2: HMAC(derived key, v1)."""
        if self._meta(_FINGERPRINTS_V1) is None:
            return
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT key_id, version, fingerprint FROM versions WHERE fingerprint IS NOT NULL"
            ).fetchall()
            conn.executemany(
                "UPDATE versions SET fingerprint = ? WHERE key_id = ? AND version = ?",
                [
                    (self._root_key.upgrade_fingerprint(bytes(fp)), key_id, version)
                    for key_id, version, fp in rows
                ],
            )
            conn.execute("DELETE FROM meta WHERE name = ?", (_FINGERPRINTS_V1,))
        if rows:
            log.info("store %s: %d fingerprints now keyed from the root key", self.path, len(rows))

    def _meta(self, name: str) -> Any:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (disk full, locked) may leave the transaction open, or SQLite
                # may have rolled it back already: either way the connection must be usable.
                if self._conn.in_transaction:
                    with suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise
        if self._shred_pending:
            self._checkpoint(attempts=1)

    # -- reads ---------------------------------------------------------------------------

    @_store_errors
    def list_keys(self) -> list[KeyRecord]:
        with self._lock:
            rows = self._conn.execute(_SELECT_KEY + " ORDER BY created_at, key_id").fetchall()
            return [self._record(row) for row in rows]

    @_store_errors
    def get(self, key_id: uuid.UUID) -> KeyRecord | None:
        with self._lock:
            row = self._conn.execute(_SELECT_KEY + " WHERE key_id = ?", (str(key_id),)).fetchone()
            return None if row is None else self._record(row)

    def _record(self, row: Any) -> KeyRecord:
        key_id = str(row[0])
        versions = tuple(
            VersionRecord(
                version=v[0],
                created_at=datetime.fromisoformat(v[1]),
                state=VersionState(v[2]),
                fingerprint=v[3],
                imported_at=_dt(v[4]),
                expires_at=_dt(v[5]),
            )
            for v in self._conn.execute(
                "SELECT version, created_at, state, fingerprint, imported_at, expires_at "
                "FROM versions WHERE key_id = ? ORDER BY version",
                (key_id,),
            )
        )
        aliases = tuple(
            a
            for (a,) in self._conn.execute(
                "SELECT alias FROM aliases WHERE key_id = ? ORDER BY alias", (key_id,)
            )
        )
        return KeyRecord(
            key_id=uuid.UUID(key_id),
            namespace=str(row[1]),
            name=str(row[2]),
            origin=Origin(row[3]),
            key_spec=KeySpec(row[4]),
            key_usage=KeyUsage(row[5]),
            description=str(row[6]),
            enabled=bool(row[7]),
            rotation_period_days=row[8],
            last_rotated_at=_dt(row[9]),
            next_rotation_at=_dt(row[10]),
            deletion_requested_at=_dt(row[11]),
            deletion_date=_dt(row[12]),
            destroyed_at=_dt(row[13]),
            default_service=row[14],
            created_at=datetime.fromisoformat(str(row[15])),
            namespace_uid=row[17],
            object_uid=row[18],
            detached_at=_dt(row[19]),
            deletion_requested_elapsed=row[20],
            versions=versions,
            aliases=aliases,
        )

    @_store_errors
    def load_material(self, key_id: uuid.UUID, version: int) -> bytes | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT wrapped FROM material WHERE key_id = ? AND version = ?",
                (str(key_id), version),
            ).fetchone()
        if row is None:
            return None
        return self._root_key.unwrap_material(key_id, version, row[0])

    @_store_errors
    def load_import_parameters(self, token: str) -> tuple[ImportParameters, bytes] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT key_id, wrapping_algorithm, wrapping_key_spec, public_key_pem, "
                "wrapped_private_key, expires_at FROM import_parameters WHERE token = ?",
                (token,),
            ).fetchone()
        if row is None:
            return None
        params = ImportParameters(
            token=token,
            key_id=uuid.UUID(row[0]),
            wrapping_algorithm=row[1],
            wrapping_key_spec=row[2],
            public_key_pem=row[3],
            expires_at=datetime.fromisoformat(row[5]),
        )
        return params, self._root_key.unwrap_secret(f"import/{token}", row[4])

    @_store_errors
    def load_elapsed(self) -> int:
        """The elapsed-time counter last persisted (microseconds; 0 for a new store)."""
        value = self._meta(_ELAPSED)
        return 0 if value is None else int(value)

    def fingerprint(self, key_id: uuid.UUID, material: bytes) -> bytes:
        """The fingerprint this store keeps for ``material`` in key ``key_id`` (keyed from the
        root key: see :meth:`RootKey.material_fingerprint`)."""
        return self._root_key.material_fingerprint(key_id, material)

    @property
    def shred_pending(self) -> bool:
        """True while destroyed material may still have a copy in the WAL (a reader holds it)."""
        return self._shred_pending

    # -- writes --------------------------------------------------------------------------

    @_store_errors
    def save_elapsed(self, elapsed_us: int) -> None:
        with self._transaction() as conn:
            _write_elapsed(conn, elapsed_us)

    @_store_errors
    def create(
        self, record: KeyRecord, materials: Mapping[int, bytes], *, elapsed_us: int | None = None
    ) -> None:
        try:
            with self._transaction() as conn:
                conn.execute(
                    _INSERT_KEY,
                    _key_row(record),
                )
                _write_elapsed(conn, elapsed_us)
                _fault("create:key-row")
                self._write_versions(conn, record)
                _fault("create:versions")
                self._write_material(conn, record.key_id, materials)
                _fault("create:material")
                self._write_aliases(conn, record)
        except sqlite3.IntegrityError as exc:
            raise _integrity_error(record, exc) from None

    @_store_errors
    def update(
        self,
        record: KeyRecord,
        *,
        add_material: Mapping[int, bytes] | None = None,
        drop_material: Collection[int] = (),
        elapsed_us: int | None = None,
    ) -> None:
        try:
            with self._transaction() as conn:
                changed = conn.execute(
                    _UPDATE_KEY,
                    (*_key_row(record), str(record.key_id)),
                ).rowcount
                if changed != 1:
                    raise StoreError(f"the store has no key {record.key_id} to update")
                _write_elapsed(conn, elapsed_us)
                _fault("update:key-row")
                self._write_versions(conn, record)
                _fault("update:versions")
                for version in drop_material:
                    conn.execute(
                        "DELETE FROM material WHERE key_id = ? AND version = ?",
                        (str(record.key_id), version),
                    )
                if drop_material:
                    _mark_shred_pending(conn)
                self._write_material(conn, record.key_id, add_material or {})
                _fault("update:material")
                self._write_aliases(conn, record)
        except sqlite3.IntegrityError as exc:
            raise _integrity_error(record, exc) from None
        if drop_material:
            self._shred_pending = True
            self._checkpoint()

    @_store_errors
    def destroy(self, record: KeyRecord, *, elapsed_us: int | None = None) -> None:
        key_id = str(record.key_id)
        with self._transaction() as conn:
            _mark_shred_pending(conn)
            _write_elapsed(conn, elapsed_us)
            conn.execute("DELETE FROM material WHERE key_id = ?", (key_id,))
            _fault("destroy:material")
            conn.execute("DELETE FROM import_parameters WHERE key_id = ?", (key_id,))
            conn.execute("DELETE FROM aliases WHERE key_id = ?", (key_id,))
            conn.execute(
                _UPDATE_KEY,
                (*_key_row(record), key_id),
            )
            _fault("destroy:key-row")
            self._write_versions(conn, record)
            # Shredding is the store's promise, whatever the record says: no fingerprint stays.
            conn.execute(
                "UPDATE versions SET state = ?, fingerprint = NULL WHERE key_id = ?",
                (VersionState.DESTROYED.value, key_id),
            )
        self._shred_pending = True
        self._checkpoint()

    @_store_errors
    def save_import_parameters(
        self, params: ImportParameters, private_key_pem: bytes, *, now: datetime
    ) -> None:
        with self._transaction() as conn:
            # Parameters that expired are useless; drop them with each new set. Still-valid
            # ones stay: a user may be wrapping material under an earlier public key.
            conn.execute(
                "DELETE FROM import_parameters WHERE key_id = ? AND expires_at <= ?",
                (str(params.key_id), now.isoformat()),
            )
            conn.execute(
                "INSERT INTO import_parameters (token, key_id, wrapping_algorithm, "
                "wrapping_key_spec, public_key_pem, wrapped_private_key, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    params.token,
                    str(params.key_id),
                    params.wrapping_algorithm,
                    params.wrapping_key_spec,
                    params.public_key_pem,
                    self._root_key.wrap_secret(f"import/{params.token}", private_key_pem),
                    params.expires_at.isoformat(),
                ),
            )

    def _write_versions(self, conn: sqlite3.Connection, record: KeyRecord) -> None:
        conn.executemany(
            "INSERT INTO versions (key_id, version, created_at, state, fingerprint, imported_at, "
            "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key_id, version) DO UPDATE "
            "SET state = excluded.state, fingerprint = excluded.fingerprint, "
            "imported_at = excluded.imported_at, expires_at = excluded.expires_at",
            [
                (
                    str(record.key_id),
                    v.version,
                    v.created_at.isoformat(),
                    v.state.value,
                    v.fingerprint,
                    _ts(v.imported_at),
                    _ts(v.expires_at),
                )
                for v in record.versions
            ],
        )

    def _write_material(
        self, conn: sqlite3.Connection, key_id: uuid.UUID, materials: Mapping[int, bytes]
    ) -> None:
        conn.executemany(
            "INSERT INTO material (key_id, version, wrapped) VALUES (?, ?, ?)",
            [
                (str(key_id), version, self._root_key.wrap_material(key_id, version, material))
                for version, material in materials.items()
            ],
        )

    def _write_aliases(self, conn: sqlite3.Connection, record: KeyRecord) -> None:
        conn.execute("DELETE FROM aliases WHERE key_id = ?", (str(record.key_id),))
        conn.executemany(
            "INSERT INTO aliases (namespace, alias, key_id) VALUES (?, ?, ?)",
            [(record.namespace, alias, str(record.key_id)) for alias in record.aliases],
        )

    # -- shredding -----------------------------------------------------------------------

    def _checkpoint(self, attempts: int | None = None) -> bool:
        """After a destruction or dropped material: checkpoint until it completes (bounded).

        Called after the transaction committed, so it never raises: what cannot be done now
        stays pending (the row says so) and is retried.
        """
        try:
            done = self._checkpoint_and_clear(
                attempts=1 + len(self._shred_backoff) if attempts is None else attempts
            )
        except (sqlite3.Error, StoreError) as exc:
            log.warning("store %s: checkpoint failed, the shred stays pending: %s", self.path, exc)
            return False
        if not done and attempts is None:
            log.warning(
                "store %s: a reader holds the WAL, so destroyed material may still have a copy "
                "in it; the shred stays pending and is retried",
                self.path,
            )
        return done

    @_store_errors
    def complete_shred(self) -> bool:
        """Retry a pending shred once; True when none is pending any more."""
        if not self._shred_pending:
            return True
        return self._checkpoint_and_clear(attempts=1)

    def _checkpoint_and_clear(self, *, attempts: int) -> bool:
        for attempt in range(attempts):
            if attempt:
                self._sleep(self._shred_backoff[attempt - 1])
            if self._checkpoint_once():
                break
        else:
            return False
        if self._shred_pending:
            with self._lock:
                self._shred_pending = False  # first: the transaction below must not recurse
                try:
                    with self._transaction() as conn:
                        conn.execute("DELETE FROM meta WHERE name = ?", (_SHRED_PENDING,))
                except BaseException:
                    self._shred_pending = True
                    raise
                # That commit wrote a page of the meta table (no material) to the WAL: fold it
                # in too, so the WAL is empty again whenever no reader is in the way.
                self._checkpoint_once()
        return True

    def _checkpoint_once(self) -> bool:
        """One ``wal_checkpoint(TRUNCATE)`` that does not wait for readers; True if complete."""
        with self._lock:
            self._conn.execute("PRAGMA busy_timeout = 0")
            try:
                busy, wal_frames, checkpointed = self._conn.execute(
                    "PRAGMA wal_checkpoint(TRUNCATE)"
                ).fetchone()
            finally:
                self._conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        return bool(busy == 0 and wal_frames == checkpointed)

    # -- backup and restore --------------------------------------------------------------

    @_store_errors
    def backup(self, destination: Path) -> None:
        destination.parent.mkdir(parents=True, exist_ok=True)
        tmp = destination.with_name(destination.name + ".partial")
        tmp.unlink(missing_ok=True)
        # Owner-only from the first byte, not after the copy.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        with self._lock:
            target = sqlite3.connect(tmp)
            try:
                self._conn.backup(target)
                target.execute("PRAGMA journal_mode=DELETE")
            finally:
                target.close()
        tmp.chmod(0o600)
        tmp.replace(destination)

    @_store_errors
    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _write_elapsed(conn: sqlite3.Connection, elapsed_us: int | None) -> None:
    if elapsed_us is not None:
        conn.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value)",
            (_ELAPSED, elapsed_us),
        )


def _mark_shred_pending(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, 1)", (_SHRED_PENDING,))


def restore_store(backup: Path, store_path: Path, root_key: RootKey) -> None:
    """Replace the store at ``store_path`` with ``backup``; the operator must be stopped.

    The backup is opened first with the given root key, so a backup of another store (or the
    wrong root key) is refused before anything is overwritten. The restored store resumes
    the elapsed-time counter of the backup: pending deletions wait longer, never less.
    """
    try:
        _restore(backup, store_path, root_key)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot restore {backup} to {store_path}: {exc}") from None


def _restore(backup: Path, store_path: Path, root_key: RootKey) -> None:
    if not backup.is_file():
        raise StoreError(f"backup {backup} does not exist")
    store_path.parent.mkdir(parents=True, exist_ok=True)
    staging = store_path.with_name(store_path.name + ".restoring")
    staged = (staging, Path(f"{staging}-wal"), Path(f"{staging}-shm"))
    for path in staged:
        path.unlink(missing_ok=True)
    try:
        os.close(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        shutil.copyfile(backup, staging)
        _check_is_a_store(staging, backup)
        SqliteKeyStore(staging, root_key).close()  # validates schema and root key
    except BaseException:
        for path in staged:
            path.unlink(missing_ok=True)
        raise
    for suffix in ("-wal", "-shm"):
        Path(f"{store_path}{suffix}").unlink(missing_ok=True)
    staging.chmod(0o600)
    staging.replace(store_path)


def _check_is_a_store(staging: Path, backup: Path) -> None:
    """An empty or unrelated file would open as a new, empty store: refuse it instead."""
    conn = sqlite3.connect(staging)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"backup {backup} is not a key store: {exc}") from None
    finally:
        conn.close()
    if version < 1:
        raise StoreError(f"backup {backup} is empty or not a kms-operator key store")


_KEY_COLUMN_NAMES = (
    "key_id",
    "namespace",
    "name",
    "origin",
    "key_spec",
    "key_usage",
    "description",
    "enabled",
    "rotation_period_days",
    "last_rotated_at",
    "next_rotation_at",
    "deletion_requested_at",
    "deletion_date",
    "destroyed_at",
    "default_service",
    "created_at",
    "state",
    "namespace_uid",
    "object_uid",
    "detached_at",
    "deletion_requested_elapsed",
)
_KEY_COLUMNS = ", ".join(_KEY_COLUMN_NAMES)
_KEY_PLACEHOLDERS = ", ".join("?" for _ in _KEY_COLUMN_NAMES)
# Built from the fixed column names above, never from input.
_SELECT_KEY = f"SELECT {_KEY_COLUMNS} FROM keys"  # noqa: S608
_INSERT_KEY = f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES ({_KEY_PLACEHOLDERS})"  # noqa: S608
_UPDATE_KEY = f"UPDATE keys SET ({_KEY_COLUMNS}) = ({_KEY_PLACEHOLDERS}) WHERE key_id = ?"  # noqa: S608


def _key_row(record: KeyRecord) -> tuple[object, ...]:
    return (
        str(record.key_id),
        record.namespace,
        record.name,
        record.origin.value,
        record.key_spec.value,
        record.key_usage.value,
        record.description,
        int(record.enabled),
        record.rotation_period_days,
        _ts(record.last_rotated_at),
        _ts(record.next_rotation_at),
        _ts(record.deletion_requested_at),
        _ts(record.deletion_date),
        _ts(record.destroyed_at),
        record.default_service,
        record.created_at.isoformat(),
        record.state.value,
        record.namespace_uid,
        record.object_uid,
        _ts(record.detached_at),
        record.deletion_requested_elapsed,
    )


def _integrity_error(record: KeyRecord, exc: sqlite3.IntegrityError) -> Exception:
    text = str(exc)
    if "aliases" in text:
        return AliasConflict(
            f"an alias of key {record.namespace}/{record.name} is already used by another key "
            "in the namespace"
        )
    if "keys.namespace" in text or "keys_binding" in text:
        return AliasConflict(f"a key named {record.namespace}/{record.name} already exists")
    return StoreError(f"the store refused a write for key {record.key_id}: {text}")

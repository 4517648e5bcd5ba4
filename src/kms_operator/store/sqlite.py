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

The schema and what each open does before serving are in :mod:`.migrations`, rows and records
both ways in :mod:`.rows`, restoring a backup in :mod:`.backups`.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from kms_operator.errors import StoreError

from . import migrations, rows
from .migrations import ELAPSED, FINGERPRINTS_V1, MIGRATIONS, SCHEMA_VERSION, SHRED_PENDING
from .records import ImportParameters, KeyRecord, VersionState
from .rootkey import RootKey

__all__ = ["DEFAULT_SHRED_BACKOFF", "MIGRATIONS", "SCHEMA_VERSION", "SqliteKeyStore"]

#: Called with a point name inside transactions. Only crash-safety tests set it.
fault_hook: Callable[[str], None] | None = None

log = logging.getLogger(__name__)

_BUSY_TIMEOUT_MS = 30_000
#: Pauses between checkpoint attempts after a destruction, in the caller's thread (~1 s).
DEFAULT_SHRED_BACKOFF: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.6)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _fault(point: str) -> None:
    if fault_hook is not None:
        fault_hook(point)


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
                migrations.migrate(self._conn, self._transaction, path)
                migrations.check_root_key(self._conn, self._transaction, root_key, path)
                if self._meta(FINGERPRINTS_V1) is not None:
                    migrations.upgrade_fingerprints(self._transaction, root_key, path)
                # A destruction whose checkpoint did not complete (killed, or a reader held the
                # WAL) left old pages (wrapped material) in the file or the WAL: finish it now.
                # Stores of older versions kept no pending row: one attempt in every case.
                self._shred_pending = self._meta(SHRED_PENDING) is not None
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
            found = self._conn.execute(rows.SELECT_KEY + " ORDER BY created_at, key_id")
            return [rows.read_record(self._conn, row) for row in found.fetchall()]

    @_store_errors
    def get(self, key_id: uuid.UUID) -> KeyRecord | None:
        with self._lock:
            row = self._conn.execute(
                rows.SELECT_KEY + " WHERE key_id = ?", (str(key_id),)
            ).fetchone()
            return None if row is None else rows.read_record(self._conn, row)

    @_store_errors
    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version`` of this connection: it moves with every commit
        made through another connection (another process's, a second store on the file)."""
        with self._lock:
            value: int = self._conn.execute("PRAGMA data_version").fetchone()[0]
        return value

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
        params = rows.import_parameters(token, row)
        return params, self._root_key.unwrap_secret(f"import/{token}", row[4])

    @_store_errors
    def load_elapsed(self) -> int:
        """The elapsed-time counter last persisted (microseconds; 0 for a new store)."""
        value = self._meta(ELAPSED)
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
                    rows.INSERT_KEY,
                    rows.key_row(record),
                )
                _write_elapsed(conn, elapsed_us)
                _fault("create:key-row")
                self._write_versions(conn, record)
                _fault("create:versions")
                self._write_material(conn, record.key_id, materials)
                _fault("create:material")
                self._write_aliases(conn, record)
        except sqlite3.IntegrityError as exc:
            raise migrations.integrity_error(record, exc) from None

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
                    rows.UPDATE_KEY,
                    (*rows.key_row(record), str(record.key_id)),
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
            raise migrations.integrity_error(record, exc) from None
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
                rows.UPDATE_KEY,
                (*rows.key_row(record), key_id),
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
                rows.import_parameters_row(
                    params, self._root_key.wrap_secret(f"import/{params.token}", private_key_pem)
                ),
            )

    def _write_versions(self, conn: sqlite3.Connection, record: KeyRecord) -> None:
        conn.executemany(
            "INSERT INTO versions (key_id, version, created_at, state, fingerprint, imported_at, "
            "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key_id, version) DO UPDATE "
            "SET state = excluded.state, fingerprint = excluded.fingerprint, "
            "imported_at = excluded.imported_at, expires_at = excluded.expires_at",
            rows.version_rows(record),
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
                        conn.execute("DELETE FROM meta WHERE name = ?", (SHRED_PENDING,))
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
            (ELAPSED, elapsed_us),
        )


def _mark_shred_pending(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, 1)", (SHRED_PENDING,))

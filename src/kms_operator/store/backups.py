"""Restoring a backup of the store (:meth:`~.sqlite.SqliteKeyStore.backup` writes them).

The backup is staged next to the store, opened with the root key (schema and root key
checked), and only then moved over the store, so a failed restore leaves the store as it was.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

from kms_operator.errors import StoreError

from .rootkey import RootKey
from .sqlite import SqliteKeyStore


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

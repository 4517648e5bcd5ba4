"""The store's schema: its migrations, the names of its meta rows, what each open does before
the store serves (migrate, check the root key, upgrade old fingerprints), and what a write its
constraints refuse means.

Each migration is one transaction that also sets ``PRAGMA user_version``, so a store is always
at one version, and a store of a newer version than this code knows is refused.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from kms_operator.errors import AliasConflict, StoreError

from .records import KeyRecord
from .rootkey import RootKey

log = logging.getLogger(__name__)

#: Opens one ``BEGIN IMMEDIATE`` transaction of the store.
Transaction = Callable[[], AbstractContextManager[sqlite3.Connection]]

_CHECK_LABEL = "root-key-check"
_CHECK_VALUE = b"kms-operator root key check"
#: meta rows: the elapsed-time counter (microseconds), a destruction whose checkpoint has not
#: completed yet, fingerprints still in their v1 form (set by migration 4, cleared at open).
ELAPSED = "elapsed-us"
SHRED_PENDING = "shred-pending"
FINGERPRINTS_V1 = "fingerprints-v1"

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


def migrate(conn: sqlite3.Connection, transaction: Transaction, path: Path) -> None:
    (current,) = conn.execute("PRAGMA user_version").fetchone()
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"the store {path} has schema version {current}, newer than this "
            f"kms-operator understands ({SCHEMA_VERSION}); upgrade kms-operator"
        )
    for number in range(current, SCHEMA_VERSION):
        with transaction() as writing:
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    writing.execute(statement)
            writing.execute(f"PRAGMA user_version={number + 1}")


def check_root_key(
    conn: sqlite3.Connection, transaction: Transaction, root_key: RootKey, path: Path
) -> None:
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (_CHECK_LABEL,)).fetchone()
    if row is None:
        with transaction() as writing:
            writing.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                (_CHECK_LABEL, root_key.wrap_secret(_CHECK_LABEL, _CHECK_VALUE)),
            )
        return
    try:
        root_key.unwrap_secret(_CHECK_LABEL, row[0])
    except StoreError:
        raise StoreError(
            f"the root key does not match the store {path}: it was created with "
            "another root key (restore the original root key Secret)"
        ) from None


def upgrade_fingerprints(transaction: Transaction, root_key: RootKey, path: Path) -> None:
    """v1 fingerprints (HMAC keyed by the key id) become v2: HMAC(derived key, v1)."""
    with transaction() as conn:
        rows = conn.execute(
            "SELECT key_id, version, fingerprint FROM versions WHERE fingerprint IS NOT NULL"
        ).fetchall()
        conn.executemany(
            "UPDATE versions SET fingerprint = ? WHERE key_id = ? AND version = ?",
            [
                (root_key.upgrade_fingerprint(bytes(fp)), key_id, version)
                for key_id, version, fp in rows
            ],
        )
        conn.execute("DELETE FROM meta WHERE name = ?", (FINGERPRINTS_V1,))
    if rows:
        log.info("store %s: %d fingerprints now keyed from the root key", path, len(rows))


def integrity_error(record: KeyRecord, exc: sqlite3.IntegrityError) -> Exception:
    """What a write refused by a constraint of the schema means (an alias or name taken)."""
    text = str(exc)
    if "aliases" in text:
        return AliasConflict(
            f"an alias of key {record.namespace}/{record.name} is already used by another key "
            "in the namespace"
        )
    if "keys.namespace" in text or "keys_binding" in text:
        return AliasConflict(f"a key named {record.namespace}/{record.name} already exists")
    return StoreError(f"the store refused a write for key {record.key_id}: {text}")

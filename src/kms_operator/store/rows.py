"""Rows of the SQLite store and the records they hold, both ways.

Times are ISO 8601 text (``datetime.isoformat``, as written since schema 1), booleans integers,
enums their values, key ids their hyphenated text. The ``keys`` columns are listed once, in
:data:`KEY_COLUMN_NAMES`, and the statements that read and write them are built from that list.
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import datetime
from typing import Any

from .records import (
    ImportParameters,
    KeyRecord,
    KeySpec,
    KeyUsage,
    Origin,
    VersionRecord,
    VersionState,
)

KEY_COLUMN_NAMES = (
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
_KEY_COLUMNS = ", ".join(KEY_COLUMN_NAMES)
_KEY_PLACEHOLDERS = ", ".join("?" for _ in KEY_COLUMN_NAMES)
# Built from the fixed column names above, never from input.
SELECT_KEY = f"SELECT {_KEY_COLUMNS} FROM keys"  # noqa: S608
INSERT_KEY = f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES ({_KEY_PLACEHOLDERS})"  # noqa: S608
UPDATE_KEY = f"UPDATE keys SET ({_KEY_COLUMNS}) = ({_KEY_PLACEHOLDERS}) WHERE key_id = ?"  # noqa: S608


def ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def key_row(record: KeyRecord) -> tuple[object, ...]:
    """The ``keys`` row of ``record``, in the order of :data:`KEY_COLUMN_NAMES`."""
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
        ts(record.last_rotated_at),
        ts(record.next_rotation_at),
        ts(record.deletion_requested_at),
        ts(record.deletion_date),
        ts(record.destroyed_at),
        record.default_service,
        record.created_at.isoformat(),
        record.state.value,
        record.namespace_uid,
        record.object_uid,
        ts(record.detached_at),
        record.deletion_requested_elapsed,
    )


def version_rows(record: KeyRecord) -> list[tuple[object, ...]]:
    """The ``versions`` rows of ``record``: key id, version, created, state, fingerprint,
    imported, expires."""
    return [
        (
            str(record.key_id),
            v.version,
            v.created_at.isoformat(),
            v.state.value,
            v.fingerprint,
            ts(v.imported_at),
            ts(v.expires_at),
        )
        for v in record.versions
    ]


def read_record(conn: sqlite3.Connection, row: Any) -> KeyRecord:
    """The record of a ``keys`` row (:data:`SELECT_KEY`), with its versions and aliases."""
    key_id = str(row[0])
    versions = tuple(
        VersionRecord(
            version=v[0],
            created_at=datetime.fromisoformat(v[1]),
            state=VersionState(v[2]),
            fingerprint=v[3],
            imported_at=dt(v[4]),
            expires_at=dt(v[5]),
        )
        for v in conn.execute(
            "SELECT version, created_at, state, fingerprint, imported_at, expires_at "
            "FROM versions WHERE key_id = ? ORDER BY version",
            (key_id,),
        )
    )
    aliases = tuple(
        a
        for (a,) in conn.execute(
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
        last_rotated_at=dt(row[9]),
        next_rotation_at=dt(row[10]),
        deletion_requested_at=dt(row[11]),
        deletion_date=dt(row[12]),
        destroyed_at=dt(row[13]),
        default_service=row[14],
        created_at=datetime.fromisoformat(str(row[15])),
        namespace_uid=row[17],
        object_uid=row[18],
        detached_at=dt(row[19]),
        deletion_requested_elapsed=row[20],
        versions=versions,
        aliases=aliases,
    )


def import_parameters(token: str, row: Any) -> ImportParameters:
    """The parameters of an ``import_parameters`` row read without its token and private key:
    key id, algorithm, key spec, public key, (wrapped private key), expiry."""
    return ImportParameters(
        token=token,
        key_id=uuid.UUID(row[0]),
        wrapping_algorithm=row[1],
        wrapping_key_spec=row[2],
        public_key_pem=row[3],
        expires_at=datetime.fromisoformat(row[5]),
    )


def import_parameters_row(
    params: ImportParameters, wrapped_private_key: bytes
) -> tuple[object, ...]:
    return (
        params.token,
        str(params.key_id),
        params.wrapping_algorithm,
        params.wrapping_key_spec,
        params.public_key_pem,
        wrapped_private_key,
        params.expires_at.isoformat(),
    )

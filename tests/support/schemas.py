"""Stores as older versions of kms-operator wrote them, for migration tests.

:func:`downgrade` takes a closed store written by this version and undoes the schema
migrations down to ``version``, with plain SQL, the way an old binary would have left it.
Fingerprints are not touched: schema 3 kept v1 fingerprints, which only the test knows how
to compute (it knows the material); see ``test_fingerprints.py``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

_DOWN: dict[int, str] = {
    # 4 -> 3: the flag of v1 fingerprints is cleared at open already; nothing else changed.
    4: "",
    # 3 -> 2: no elapsed-time measure.
    3: """
        ALTER TABLE keys DROP COLUMN deletion_requested_elapsed;
        DELETE FROM meta WHERE name IN ('elapsed-us', 'shred-pending');
    """,
    # 2 -> 1: no UIDs, no detached keys.
    2: """
        DROP INDEX keys_binding;
        CREATE UNIQUE INDEX keys_binding ON keys (namespace, name) WHERE destroyed_at IS NULL;
        ALTER TABLE keys DROP COLUMN namespace_uid;
        ALTER TABLE keys DROP COLUMN object_uid;
        ALTER TABLE keys DROP COLUMN detached_at;
    """,
}


def downgrade(path: Path, version: int) -> None:
    conn = sqlite3.connect(path)
    try:
        (current,) = conn.execute("PRAGMA user_version").fetchone()
        for number in range(current, version, -1):
            conn.executescript(_DOWN[number])
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
    finally:
        conn.close()

"""The ``KeyStore`` interface every backend implements.

The lifecycle service (``kms_operator.keys``) decides; the store only keeps what it is told,
each call in one atomic transaction: after a crash at any point the store holds either the
state before the call or the state after it. Every failure is a
:class:`~kms_operator.errors.StoreError` (retryable), whatever the backend's own exceptions.

Writes take the service's elapsed-time counter (``elapsed_us``) and persist it in the same
transaction, so the measure that destruction waits on survives a restart.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from datetime import datetime
from pathlib import Path
from typing import Protocol

from .records import ImportParameters, KeyRecord


class KeyStore(Protocol):
    def list_keys(self) -> list[KeyRecord]:
        """Every key, destroyed ones included (their tombstones hold no material)."""

    def get(self, key_id: uuid.UUID) -> KeyRecord | None: ...

    def data_version(self) -> int:
        """A number that changes whenever another handle on the same store (another process)
        committed a write since it was last read; this handle's own writes leave it as is."""

    def create(
        self, record: KeyRecord, materials: Mapping[int, bytes], *, elapsed_us: int | None = None
    ) -> None:
        """Insert a new key with the material of its versions (EXTERNAL keys: none)."""

    def update(
        self,
        record: KeyRecord,
        *,
        add_material: Mapping[int, bytes] | None = None,
        drop_material: Collection[int] = (),
        elapsed_us: int | None = None,
    ) -> None:
        """Replace the key's record, aliases and versions; add and drop material, atomically."""

    def destroy(self, record: KeyRecord, *, elapsed_us: int | None = None) -> None:
        """Crypto-shred: remove every version's material and fingerprint, keep a tombstone.

        No copy of the material may stay in the backend's files; what cannot be erased at once
        (a reader holds the journal) is remembered and finished later, across restarts.
        """

    def complete_shred(self) -> bool:
        """Retry a pending shred; True when none is pending."""

    def load_material(self, key_id: uuid.UUID, version: int) -> bytes | None: ...

    def load_elapsed(self) -> int:
        """The elapsed-time counter last persisted, in microseconds (0 for a new store)."""

    def save_elapsed(self, elapsed_us: int) -> None:
        """Persist the counter (never lowering it)."""

    def fingerprint(self, key_id: uuid.UUID, material: bytes) -> bytes:
        """The one-way fingerprint kept for imported material, keyed from the root key."""

    def save_import_parameters(
        self, params: ImportParameters, private_key_pem: bytes, *, now: datetime
    ) -> None:
        """Keep new parameters (private key wrapped); drop this key's expired ones."""

    def load_import_parameters(self, token: str) -> tuple[ImportParameters, bytes] | None: ...

    def backup(self, destination: Path) -> None:
        """A consistent copy of the store, material still wrapped under the root key."""

    def close(self) -> None: ...

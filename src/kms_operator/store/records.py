"""What the store keeps about a key: plain, immutable records without material.

Material never sits in a record; it is loaded on purpose through
:meth:`KeyStore.load_material`, so printing, logging or serialising a record cannot leak it.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime


class KeyState(enum.StrEnum):
    CREATING = "Creating"
    ENABLED = "Enabled"
    DISABLED = "Disabled"
    PENDING_IMPORT = "PendingImport"
    PENDING_DELETION = "PendingDeletion"
    DESTROYED = "Destroyed"


class Origin(enum.StrEnum):
    KMS = "KMS"
    EXTERNAL = "EXTERNAL"


class KeySpec(enum.StrEnum):
    SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"


class KeyUsage(enum.StrEnum):
    ENCRYPT_DECRYPT = "ENCRYPT_DECRYPT"


class VersionState(enum.StrEnum):
    ENABLED = "Enabled"  # material present
    PENDING_IMPORT = "PendingImport"  # EXTERNAL version whose material is absent or expired
    DESTROYED = "Destroyed"


@dataclass(frozen=True, slots=True)
class VersionRecord:
    version: int
    created_at: datetime
    state: VersionState
    #: One-way fingerprint of EXTERNAL material, kept after the material is deleted so that
    #: only the same material can be imported again: HMAC-SHA-256 under a key derived from the
    #: root key, of HMAC-SHA-256(key id, material) (so a copy of the store without the root key
    #: cannot test guesses, and equal material in two keys still differs).
    fingerprint: bytes | None = field(default=None, repr=False)
    imported_at: datetime | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: uuid.UUID
    namespace: str
    name: str
    origin: Origin
    created_at: datetime
    versions: tuple[VersionRecord, ...]
    key_spec: KeySpec = KeySpec.SYMMETRIC_DEFAULT
    key_usage: KeyUsage = KeyUsage.ENCRYPT_DECRYPT
    description: str = ""
    enabled: bool = True
    aliases: tuple[str, ...] = ()
    rotation_period_days: int | None = None
    last_rotated_at: datetime | None = None
    next_rotation_at: datetime | None = None
    deletion_requested_at: datetime | None = None
    deletion_date: datetime | None = None
    destroyed_at: datetime | None = None
    #: The integration a default key serves (``datakeys``), None for a user's key.
    default_service: str | None = None
    #: UIDs of the namespace and the CustomerMasterKey the key is bound to (None in stores
    #: written before schema 2, until the object that holds the key binds it again). A
    #: namespace or object re-created with the same name has new UIDs, so it never inherits
    #: an older key (DESIGN.md section 5).
    namespace_uid: str | None = None
    object_uid: str | None = None
    #: When the key lost its binding (its namespace was re-created, or its object replaced by
    #: one that did not claim it). A detached key answers no name or alias, encrypts and
    #: decrypts nothing, and keeps its own deletion schedule.
    detached_at: datetime | None = None
    #: The store's elapsed time (microseconds, :class:`~kms_operator.keys.clock.ElapsedTime`)
    #: when the deletion was requested: the key is destroyed only once its window has passed on
    #: the wall clock (``deletion_date``) and on this measure, which a clock step cannot advance.
    deletion_requested_elapsed: int | None = None

    @property
    def current_version(self) -> int:
        return self.versions[-1].version

    @property
    def is_default(self) -> bool:
        return self.default_service is not None

    @property
    def is_detached(self) -> bool:
        return self.detached_at is not None

    def version(self, number: int) -> VersionRecord | None:
        if 1 <= number <= len(self.versions):
            found = self.versions[number - 1]
            if found.version == number:
                return found
        return next((v for v in self.versions if v.version == number), None)

    @property
    def state(self) -> KeyState:
        """The lifecycle state, derived from the facts so it can never contradict them."""
        if self.destroyed_at is not None:
            return KeyState.DESTROYED
        if self.deletion_date is not None:
            return KeyState.PENDING_DELETION
        if self.versions[-1].state is not VersionState.ENABLED:
            return KeyState.PENDING_IMPORT
        if not self.enabled:
            return KeyState.DISABLED
        return KeyState.ENABLED

    def evolve(self, **changes: object) -> KeyRecord:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ImportParameters:
    """A wrapping public key and its token, published on a KeyMaterialImport's status."""

    token: str
    key_id: uuid.UUID
    wrapping_algorithm: str
    wrapping_key_spec: str
    public_key_pem: str
    expires_at: datetime

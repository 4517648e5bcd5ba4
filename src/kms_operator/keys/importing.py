"""The import verbs: wrapping parameters, imported material, deleting it (EXTERNAL keys).

The store keeps a one-way fingerprint of each version's imported material, so that only the
same material can bring back a version whose material was deleted or expired (DESIGN.md
section 2); the expiry itself is a timer (:mod:`.timers`).
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Iterable
from datetime import datetime

from kms_operator.crypto import primitives, wrapping
from kms_operator.errors import (
    DefaultKeyProtected,
    ExpiredImportToken,
    IncorrectKeyMaterial,
    InvalidImportToken,
    InvalidRequest,
)
from kms_operator.store.records import (
    ImportParameters,
    KeyRecord,
    Origin,
    VersionRecord,
    VersionState,
)
from kms_operator.timestamps import rfc3339

from .base import ServiceBase
from .rules import IMPORT_PARAMETERS_VALID_DAYS, MATERIAL_SIZE, MAX_MATERIAL_VALIDITY_DAYS

log = logging.getLogger(__name__)


class ImportingVerbs(ServiceBase):
    def create_import_parameters(
        self,
        key_id: uuid.UUID,
        algorithm: wrapping.WrappingAlgorithm,
        key_spec: wrapping.WrappingKeySpec,
    ) -> ImportParameters:
        """A wrapping public key and an import token, valid for one day."""
        with self._index.writing():
            record = self._importable(key_id)
            private_pem, public_pem = wrapping.generate_wrapping_key(key_spec)
            now = self.clock.now()
            params = ImportParameters(
                token="kmsit1_"
                + base64.urlsafe_b64encode(primitives.random_bytes(24)).decode().rstrip("="),
                key_id=record.key_id,
                wrapping_algorithm=algorithm.value,
                wrapping_key_spec=key_spec.value,
                public_key_pem=public_pem.decode(),
                expires_at=now + self.timescale.days(IMPORT_PARAMETERS_VALID_DAYS),
            )
            self._store.save_import_parameters(params, private_pem, now=now)
            return params

    def import_material(
        self,
        key_id: uuid.UUID,
        import_token: str,
        encrypted_material: bytes,
        valid_to: datetime | None = None,
    ) -> tuple[KeyRecord, int]:
        """Import wrapped material; return the key and the version it now backs.

        * the same material as a version's (by fingerprint) restores that version;
        * a key that never had material takes it as version 1;
        * new material for a key whose current version has material is a new version
          (EXTERNAL keys rotate this way);
        * different material for a key whose current version lost its own is refused: only
          the original material can bring back what was encrypted under it.
        """
        with self._index.writing():
            record = self._importable(key_id)
            loaded = self._store.load_import_parameters(import_token)
            if loaded is None or loaded[0].key_id != key_id:
                raise InvalidImportToken(
                    f"the import token is not one issued for key {record.namespace}/{record.name}"
                )
            params, private_pem = loaded
            now = self.clock.now()
            if now >= params.expires_at:
                raise ExpiredImportToken(
                    f"the import parameters expired at {rfc3339(params.expires_at)}; "
                    "request new ones"
                )
            if valid_to is not None and not (
                now < valid_to <= now + self.timescale.days(MAX_MATERIAL_VALIDITY_DAYS)
            ):
                raise InvalidRequest(
                    f"validTo must be in the future and at most {MAX_MATERIAL_VALIDITY_DAYS} "
                    "days ahead",
                    field="validTo",
                )
            try:
                material = wrapping.unwrap_material(
                    wrapping.WrappingAlgorithm(params.wrapping_algorithm),
                    private_pem,
                    encrypted_material,
                )
            except wrapping.UnwrapFailed:
                raise IncorrectKeyMaterial(
                    "the encrypted key material does not unwrap with these import parameters "
                    f"({params.wrapping_algorithm}, {params.wrapping_key_spec})"
                ) from None
            if len(material) != MATERIAL_SIZE:
                raise IncorrectKeyMaterial(
                    f"key material must be {MATERIAL_SIZE} bytes, got {len(material)}"
                )
            return self._place_material(record, material, valid_to, now)

    def _place_material(
        self, record: KeyRecord, material: bytes, valid_to: datetime | None, now: datetime
    ) -> tuple[KeyRecord, int]:
        fingerprint = self._store.fingerprint(record.key_id, material)
        versions = list(record.versions)
        current = versions[-1]
        match = next((v for v in versions if v.fingerprint == fingerprint), None)
        if match is not None:
            number = match.version
        elif current.fingerprint is None:
            number = current.version
        elif current.state is VersionState.ENABLED:
            number = current.version + 1
            versions.append(VersionRecord(number, now, VersionState.PENDING_IMPORT))
        else:
            raise IncorrectKeyMaterial(
                f"key {record.namespace}/{record.name} version {current.version} lost its "
                "material: only that same material can be imported again"
            )
        previous = versions[number - 1]
        had_material = previous.state is VersionState.ENABLED
        versions[number - 1] = VersionRecord(
            number,
            previous.created_at,
            VersionState.ENABLED,
            fingerprint=fingerprint,
            imported_at=now,
            expires_at=valid_to,
        )
        changes: dict[str, object] = {"versions": tuple(versions)}
        if number > record.current_version:
            changes["last_rotated_at"] = now
        updated = self._save(
            record.evolve(**changes),
            add_material={} if had_material else {number: material},
        )
        log.info("imported material into key %s version %d", record.key_id, number)
        return updated, number

    def delete_imported_material(
        self, key_id: uuid.UUID, versions: Iterable[int] | None = None
    ) -> KeyRecord:
        """Drop imported material (all versions by default): they go to PendingImport."""
        with self._index.writing():
            record = self.get(key_id)
            if record.origin is not Origin.EXTERNAL:
                raise InvalidRequest(
                    f"key {record.namespace}/{record.name} has KMS origin: its material "
                    "cannot be deleted on its own",
                    field="origin",
                )
            wanted = None if versions is None else set(versions)
            return self._drop_material(
                record,
                lambda v: wanted is None or v.version in wanted,
            )

    def _importable(self, key_id: uuid.UUID) -> KeyRecord:
        record = self._live(key_id, "import")
        if record.is_default:
            raise DefaultKeyProtected(
                f"key {record.namespace}/{record.name} is a default key and cannot be given "
                "imported material"
            )
        if record.origin is not Origin.EXTERNAL:
            raise InvalidRequest(
                f"key {record.namespace}/{record.name} has KMS origin: only EXTERNAL keys take "
                "imported material",
                field="keyRef",
            )
        return record

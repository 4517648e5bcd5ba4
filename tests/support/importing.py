"""The user's side of a ``KeyMaterialImport``: fetch parameters, wrap material, import it.

This is what ``kmsctl import`` does, against a :class:`KeyService` in-process.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from kms_operator.crypto import wrapping
from kms_operator.crypto.wrapping import WrappingAlgorithm, WrappingKeySpec
from kms_operator.keys.service import KeyService
from kms_operator.store.records import ImportParameters, KeyRecord


class Importer:
    """What a user (or ``kmsctl import``) does: fetch parameters, wrap material, import it."""

    def __init__(self, service: KeyService) -> None:
        self.service = service

    def parameters(
        self,
        key_id: UUID,
        algorithm: WrappingAlgorithm = WrappingAlgorithm.RSAES_OAEP_SHA_256,
        spec: WrappingKeySpec = WrappingKeySpec.RSA_2048,
    ) -> ImportParameters:
        return self.service.create_import_parameters(key_id, algorithm, spec)

    @staticmethod
    def wrap(params: ImportParameters, material: bytes) -> bytes:
        return wrapping.wrap_material(
            WrappingAlgorithm(params.wrapping_algorithm),
            params.public_key_pem.encode(),
            material,
        )

    def import_material(
        self,
        key_id: UUID,
        material: bytes,
        *,
        algorithm: WrappingAlgorithm = WrappingAlgorithm.RSAES_OAEP_SHA_256,
        valid_to: datetime | None = None,
    ) -> tuple[KeyRecord, int]:
        params = self.parameters(key_id, algorithm)
        return self.service.import_material(
            key_id, params.token, self.wrap(params, material), valid_to
        )

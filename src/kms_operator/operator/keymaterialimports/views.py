"""What the KeyMaterialImport handlers read: the spec, and the status the operator wrote."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kms_operator.crypto.wrapping import WrappingAlgorithm, WrappingKeySpec
from kms_operator.timestamps import parse_rfc3339

from .. import conditions


class Phase(enum.StrEnum):
    """``status.phase``: where the import is (the CRD's enum)."""

    WAITING = "WaitingForMaterial"
    IMPORTED = "Imported"
    EXPIRED = "Expired"
    FAILED = "Failed"


@dataclass(frozen=True)
class KeyMaterialImportSpec:
    """``spec`` as the CRD schema guarantees it (defaults applied by the API server)."""

    key_name: str
    algorithm: WrappingAlgorithm
    key_spec: WrappingKeySpec
    import_token: str | None
    secret_name: str | None
    secret_key: str
    valid_to: str | None
    #: ``spec.encryptedKeyMaterial``: the wrapped material inline (base64 text, not decoded).
    inline_material: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> KeyMaterialImportSpec:
        ref = spec.get("encryptedKeyMaterialSecretRef") or {}
        return cls(
            key_name=str((spec.get("keyRef") or {}).get("name") or ""),
            algorithm=WrappingAlgorithm(
                spec.get("wrappingAlgorithm") or WrappingAlgorithm.RSAES_OAEP_SHA_256.value
            ),
            key_spec=WrappingKeySpec(spec.get("wrappingKeySpec") or WrappingKeySpec.RSA_4096.value),
            import_token=spec.get("importToken") or None,
            secret_name=ref.get("name") or None,
            secret_key=str(ref.get("key") or "encryptedKeyMaterial"),
            valid_to=spec.get("validTo") or None,
            inline_material=spec.get("encryptedKeyMaterial") or None,
        )

    @property
    def handed_over(self) -> bool:
        """The spec carries the wrapped material (inline) or names where it is (a Secret)."""
        return self.inline_material is not None or self.secret_name is not None


@dataclass(frozen=True)
class ImportStatus:
    """What the operator wrote last into ``status``."""

    phase: Phase | None
    key_id: str | None
    key_version: int | None
    import_token: str | None
    parameters_expire_at: datetime | None
    observed_generation: int | None
    ready_status: bool
    ready_reason: str | None
    #: The generation whose import was refused (``Synced=False``): it settles until the spec
    #: changes. None when no import was refused.
    refused_generation: int | None

    @classmethod
    def parse(cls, status: Mapping[str, Any]) -> ImportStatus:
        existing = status.get("conditions")
        ready = conditions.find_condition(existing, conditions.READY)
        synced = conditions.find_condition(existing, conditions.SYNCED)
        try:
            expire_at = parse_rfc3339(status.get("parametersExpireAt"))
        except ValueError:
            expire_at = None
        version = status.get("keyVersion")
        try:
            phase = Phase(str(status.get("phase")))
        except ValueError:
            phase = None
        return cls(
            phase=phase,
            key_id=status.get("keyId") or None,
            key_version=int(version) if version is not None else None,
            import_token=status.get("importToken") or None,
            parameters_expire_at=expire_at,
            observed_generation=status.get("observedGeneration"),
            ready_status=ready.get("status") == "True",
            ready_reason=ready.get("reason"),
            refused_generation=(
                synced.get("observedGeneration") if synced.get("status") == "False" else None
            ),
        )

    def has_parameters_for(self, key_id: uuid.UUID) -> bool:
        return (
            self.import_token is not None
            and self.parameters_expire_at is not None
            and self.key_id == str(key_id)
        )

    def parameters_expired(self, now: datetime) -> bool:
        return self.parameters_expire_at is not None and now >= self.parameters_expire_at

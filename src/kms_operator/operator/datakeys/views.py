"""What a DataKey reconciliation reads from its object: the spec as the CRD guarantees it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kms_operator.keys.service import DEFAULT_ALIAS_PREFIX

from .. import conditions

#: The integration the namespace's default key for DataKeys serves.
DEFAULT_SERVICE = "datakeys"
DEFAULT_KEY_NAME = f"kms-default-{DEFAULT_SERVICE}"
DEFAULT_KEY_ALIAS = f"{DEFAULT_ALIAS_PREFIX}{DEFAULT_SERVICE}"


@dataclass(frozen=True)
class DataKeySpec:
    """``spec`` as the CRD schema guarantees it (defaults applied by the API server)."""

    key_name: str | None
    key_alias: str | None
    key_spec: str | None
    number_of_bytes: int | None
    secret_name: str
    include_plaintext: bool
    encryption_context: Mapping[str, str]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]

    @classmethod
    def parse(cls, spec: Mapping[str, Any], name: str) -> DataKeySpec:
        key_ref = spec.get("keyRef") or {}
        template = spec.get("secretTemplate") or {}
        number = spec.get("numberOfBytes")
        return cls(
            key_name=key_ref.get("name"),
            key_alias=key_ref.get("alias"),
            key_spec=spec.get("keySpec"),
            number_of_bytes=None if number is None else int(number),
            secret_name=str(spec.get("secretName") or name),
            include_plaintext=bool(spec.get("includePlaintext", True)),
            encryption_context={
                str(k): str(v) for k, v in (spec.get("encryptionContext") or {}).items()
            },
            labels={str(k): str(v) for k, v in (template.get("labels") or {}).items()},
            annotations={str(k): str(v) for k, v in (template.get("annotations") or {}).items()},
        )

    @property
    def reference(self) -> str:
        """What to resolve in the namespace: the name, the alias, or the default key's alias."""
        return self.key_name or self.key_alias or DEFAULT_KEY_ALIAS

    @property
    def uses_default_key(self) -> bool:
        return self.key_name is None and self.key_alias is None


@dataclass(frozen=True)
class DataKeyView:
    """What a reconciliation reads from the DataKey object."""

    namespace: str
    name: str
    uid: str
    generation: int | None
    spec: DataKeySpec
    status: Mapping[str, Any]

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> DataKeyView:
        meta = body["metadata"]
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            generation=meta.get("generation"),
            spec=DataKeySpec.parse(body.get("spec") or {}, meta["name"]),
            status=dict(body.get("status") or {}),
        )

    @property
    def ready(self) -> Mapping[str, Any]:
        return conditions.find_condition(self.status.get("conditions"), conditions.READY)

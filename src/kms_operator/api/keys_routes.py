"""``GET /v1/namespaces/{ns}/keys/{key}`` (and ``/aliases/{alias}``): metadata, never material.

Reading metadata through the API needs the RBAC verb ``get`` on the CMK, the same verb that
lets ``kubectl get cmk`` show the custom resource; the answer holds nothing the resource's
status does not already publish.
"""

from __future__ import annotations

from aiohttp import web

from kms_operator.contract import VERB_GET
from kms_operator.serving.calls import Call
from kms_operator.store.records import KeyRecord
from kms_operator.timestamps import rfc3339_or_none

from .calls import key_reference, run
from .crypto_routes import ALIAS_PREFIX, KEY_PREFIX
from .models import KeyMetadata, KeyVersionMetadata, Rotation


def describe(record: KeyRecord) -> KeyMetadata:
    return KeyMetadata(
        key_id=str(record.key_id),
        namespace=record.namespace,
        name=record.name,
        state=record.state.value,
        origin=record.origin.value,
        key_spec=record.key_spec.value,
        key_usage=record.key_usage.value,
        description=record.description,
        enabled=record.enabled,
        aliases=record.aliases,
        default=record.is_default,
        created_at=rfc3339_or_none(record.created_at),
        current_version=record.current_version,
        versions=tuple(
            KeyVersionMetadata(
                version=v.version,
                created_at=rfc3339_or_none(v.created_at),
                state=v.state.value,
                imported_at=rfc3339_or_none(v.imported_at),
                expires_at=rfc3339_or_none(v.expires_at),
            )
            for v in record.versions
        ),
        rotation=Rotation(
            period_days=record.rotation_period_days,
            last_rotated_at=rfc3339_or_none(record.last_rotated_at),
            next_rotation_at=rfc3339_or_none(record.next_rotation_at),
        ),
        deletion_date=rfc3339_or_none(record.deletion_date),
    )


async def _describe_key(call: Call) -> KeyMetadata:
    await call.authenticate()
    namespace, reference = call.request.match_info["ns"], key_reference(call.request)
    record = await call.resolve(VERB_GET, namespace, reference)
    call.audit.key_version = record.current_version
    return describe(record)


async def describe_key(request: web.Request) -> web.Response:
    return await run(request, "describe-key", _describe_key)


def add_routes(app: web.Application) -> None:
    app.router.add_get(KEY_PREFIX, describe_key, allow_head=False)
    app.router.add_get(ALIAS_PREFIX, describe_key, allow_head=False)

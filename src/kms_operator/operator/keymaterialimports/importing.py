"""One create / update / resume of a KeyMaterialImport: the calls to the key service.

Issue the import parameters once, then wait for the material, or import it when the spec
hands it over. The decisions are :mod:`.decisions`'; the store's calls run in threads. A
retryable domain error (the store busy) propagates for the handler to retry; a refusal is an
:class:`~kms_operator.operator.outcomes.Outcome`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from kms_operator.errors import KmsError
from kms_operator.kube.imports import Imports, SecretValueMissing
from kms_operator.store.records import KeyRecord
from kms_operator.timestamps import parse_rfc3339

from ..outcomes import Outcome
from ..runtime import Runtime
from ..scheduling import publish_key_change
from . import decisions
from .decisions import Step
from .views import ImportStatus, KeyMaterialImportSpec

log = logging.getLogger(__name__)


async def reconcile(
    runtime: Runtime, body: Mapping[str, Any], status: ImportStatus, generation: int | None
) -> Outcome:
    """The outcome of this generation, importing the material when it is handed over."""
    namespace = body["metadata"]["namespace"]
    existing = (body.get("status") or {}).get("conditions")
    spec = KeyMaterialImportSpec.parse(body.get("spec") or {})
    service = runtime.service
    if status.key_version is not None:
        return decisions.already_imported(status, existing, generation)
    record = service.find(namespace, spec.key_name)
    problem = decisions.key_problem(record, namespace, spec.key_name)
    if problem is not None:
        return problem.outcome()
    assert record is not None
    fields: dict[str, Any] = {}
    step = decisions.next_step(
        spec, status, key_id=record.key_id, generation=generation, now=service.clock.now()
    )
    if step is Step.ISSUE:
        params = await asyncio.to_thread(
            service.create_import_parameters, record.key_id, spec.algorithm, spec.key_spec
        )
        fields = decisions.parameters_fields(params)
        status = ImportStatus.parse({**(body.get("status") or {}), **fields})
        step = decisions.next_step(
            spec, status, key_id=record.key_id, generation=generation, now=service.clock.now()
        )
    if step is Step.EXPIRE:
        assert status.parameters_expire_at is not None
        return decisions.parameters_expired(status.parameters_expire_at)
    if step is Step.IMPORT:
        outcome = await _import(
            runtime,
            name=body["metadata"].get("name"),
            namespace=namespace,
            spec=spec,
            status=status,
            record=record,
        )
        return dataclasses.replace(outcome, fields={**fields, **outcome.fields})
    return decisions.waiting(namespace, spec, status.parameters_expire_at, fields)


async def _import(
    runtime: Runtime,
    *,
    name: str | None,
    namespace: str,
    spec: KeyMaterialImportSpec,
    status: ImportStatus,
    record: KeyRecord,
) -> Outcome:
    token = spec.import_token or status.import_token
    assert token is not None
    try:
        valid_to = parse_rfc3339(spec.valid_to)
    except ValueError:
        message = f"spec.validTo {spec.valid_to!r} is not an RFC 3339 date-time"
        return decisions.invalid_request(message).outcome()
    wrapped = await _wrapped_material(runtime, namespace, spec)
    if isinstance(wrapped, Outcome):
        return wrapped
    try:
        updated, version = await asyncio.to_thread(
            runtime.service.import_material, record.key_id, token, wrapped, valid_to
        )
    except KmsError as exc:
        if exc.retryable:
            raise
        return decisions.failure_of(exc, spec.valid_to).outcome()
    await asyncio.to_thread(
        publish_material_change,
        runtime,
        updated,
        decisions.MATERIAL_IMPORTED,
        f"material imported by KeyMaterialImport {name} as version {version}",
    )
    runtime.scheduler.wake()  # a validTo is a date the scheduler must time
    return decisions.imported(updated, version)


async def _wrapped_material(
    runtime: Runtime, namespace: str, spec: KeyMaterialImportSpec
) -> bytes | Outcome:
    """The wrapped bytes the spec hands over (inline, or read from the named Secret)."""
    if spec.inline_material is not None:
        try:
            return base64.b64decode(spec.inline_material, validate=True)
        except (binascii.Error, ValueError):
            message = "spec.encryptedKeyMaterial is not base64: give the base64 of wrapped.bin"
            return decisions.invalid_request(message).outcome()
    assert spec.secret_name is not None
    try:
        return await asyncio.to_thread(
            Imports.sharing(runtime.objects).read_secret_value,
            namespace,
            spec.secret_name,
            spec.secret_key,
        )
    except SecretValueMissing as exc:
        return decisions.secret_missing(str(exc))


def publish_material_change(runtime: Runtime, record: KeyRecord, reason: str, message: str) -> None:
    """Mirror a material change onto the CustomerMasterKey (status and an Event)."""
    try:
        publish_key_change(runtime.objects, record, reason, message, runtime.service.clock.now())
    except Exception:
        # The store holds the change; the key's object catches up on its next event.
        log.exception("could not publish %s of key %s to its object", reason, record.key_id)

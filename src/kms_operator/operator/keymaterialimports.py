"""Kopf handlers for ``KeyMaterialImport``: AWS KMS's ImportKeyMaterial flow as a resource.

* create / update / resume: resolve ``spec.keyRef`` to an EXTERNAL key, issue import
  parameters once (wrapping public key + import token in status), and when the spec carries the
  wrapped material (inline in ``spec.encryptedKeyMaterial``, or in the Secret named by
  ``spec.encryptedKeyMaterialSecretRef``), import it (phase ``Imported``);
* ``kmi-expiry`` daemon: sleeps until the parameters' or the material's expiry (dates from the
  status and the store, re-read often) and shows phase ``Expired``; the store's own timer
  (:mod:`.scheduling`) deletes expired material;
* ``kmi-delete``: deleting the object deletes the material it imported, unless another live
  KeyMaterialImport holds the same version (the same material imported again). The key named
  by ``status.keyId`` must be the import's own (same namespace, the key ``spec.keyRef`` names
  now, not detached): status can be written by others, so a mismatch is a Warning Event and
  no material is touched.

Wrapped material inline in the spec would reach the log through Kopf's DEBUG lines (they print
the body and its diffs): :class:`RedactInlineMaterial` takes it out of those lines.

One object is one import: parameters are issued once and are not renewed. Expired parameters
or a spec change after the import are answered by creating a new KeyMaterialImport.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import logging
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import kopf

from kms_operator.contract import GROUP, KMI_PLURAL, VERSION
from kms_operator.crypto.wrapping import WrappingAlgorithm, WrappingKeySpec
from kms_operator.errors import (
    DefaultKeyProtected,
    ExpiredImportToken,
    IncorrectKeyMaterial,
    InvalidImportToken,
    InvalidRequest,
    KeyPendingDeletion,
    KmsError,
    NotFound,
)
from kms_operator.keys.service import MATERIAL_SIZE
from kms_operator.kube.imports import Conflict, Imports, SecretValueMissing
from kms_operator.store.records import ImportParameters, KeyRecord, KeyState, Origin, VersionState
from kms_operator.timestamps import parse_rfc3339, rfc3339, rfc3339_or_none

from . import conditions
from .conditions import Condition
from .registries import registry
from .runtime import Runtime
from .scheduling import publish_key_change

log = logging.getLogger(__name__)

# Phases (display only: decisions read conditions, keyVersion and dates).
WAITING = "WaitingForMaterial"
IMPORTED = "Imported"
EXPIRED = "Expired"
FAILED = "Failed"

# Reasons (conditions and Events).
WAITING_FOR_MATERIAL = "WaitingForMaterial"
MATERIAL_IMPORTED = "Imported"
KEY_NOT_FOUND = "KeyNotFound"
KEY_NOT_EXTERNAL = "KeyNotExternal"
KEY_PENDING_DELETION = "KeyPendingDeletion"
MATERIAL_SECRET_NOT_FOUND = "MaterialSecretNotFound"  # noqa: S105 - a reason
PARAMETERS_EXPIRED = "ImportParametersExpired"
EXPIRED_IMPORT_TOKEN = ExpiredImportToken.code
INCORRECT_KEY_MATERIAL = IncorrectKeyMaterial.code
INVALID_IMPORT_TOKEN = InvalidImportToken.code
INVALID_REQUEST = InvalidRequest.code
MATERIAL_EXPIRED = conditions.MATERIAL_EXPIRED
MATERIAL_DELETED = "MaterialDeleted"
MATERIAL_KEPT = "MaterialKept"
ALREADY_IMPORTED = "AlreadyImported"
NOT_OWN_KEY = "KeyNotOwned"

#: Failures a retry of the same spec cannot cure: settled until the spec changes.
FINAL_REASONS = frozenset(
    {
        KEY_NOT_EXTERNAL,
        conditions.DEFAULT_KEY_PROTECTED,
        PARAMETERS_EXPIRED,
        EXPIRED_IMPORT_TOKEN,
        INCORRECT_KEY_MATERIAL,
        INVALID_IMPORT_TOKEN,
        INVALID_REQUEST,
    }
)
#: Reasons under which the expiry daemon watches the import parameters' date.
_WAITING_REASONS = frozenset({WAITING_FOR_MATERIAL, MATERIAL_SECRET_NOT_FOUND})

KEY_RETRY_DELAY = 10.0  # the key does not exist yet, or is pending deletion (may be cancelled)
SECRET_RETRY_DELAY = 5.0  # the Secret named by the spec is not there yet
STORE_RETRY_DELAY = 10.0
CONFLICT_RETRY = 0.5
#: Where the wrapped material sits in a line Kopf logs (a body, a diff, a patch, the diff-base
#: annotation's JSON), and the quoted base64 runs to take out of such a line.
_INLINE_FIELD = re.compile(r"encryptedKeyMaterial\\?['\"]")
_BASE64_RUN = re.compile(r"(\\?['\"])[A-Za-z0-9+/]{16,}={0,2}\1(?!\s*:)")  # values, not keys
RECREATE_HINT = (
    "create a new KeyMaterialImport (delete this one and apply it again, or use another name) "
    "to get a new wrapping public key and import token"
)


# -- logging -------------------------------------------------------------------------------


class RedactInlineMaterial(logging.Filter):
    """Replaces the quoted base64 in log lines that show ``spec.encryptedKeyMaterial``.

    Kopf logs whole bodies, diffs and patches at DEBUG; wrapped material is only readable by
    the store, but it stays out of logs like everything handed over for an import.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _INLINE_FIELD.search(message):
            record.msg, record.args = _BASE64_RUN.sub(r"\1<redacted>\1", message), ()
        return True


_REDACTION = RedactInlineMaterial()
logging.getLogger("kopf.objects").addFilter(_REDACTION)


# -- parsing -------------------------------------------------------------------------------


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

    key_id: str | None
    key_version: int | None
    import_token: str | None
    parameters_expire_at: datetime | None
    observed_generation: int | None
    ready_status: bool
    ready_reason: str | None

    @classmethod
    def parse(cls, status: Mapping[str, Any]) -> ImportStatus:
        ready: Mapping[str, Any] = next(
            (c for c in status.get("conditions") or () if c.get("type") == conditions.READY), {}
        )
        try:
            expire_at = parse_rfc3339(status.get("parametersExpireAt"))
        except ValueError:
            expire_at = None
        version = status.get("keyVersion")
        return cls(
            key_id=status.get("keyId") or None,
            key_version=int(version) if version is not None else None,
            import_token=status.get("importToken") or None,
            parameters_expire_at=expire_at,
            observed_generation=status.get("observedGeneration"),
            ready_status=ready.get("status") == "True",
            ready_reason=ready.get("reason"),
        )

    def has_parameters_for(self, key_id: uuid.UUID) -> bool:
        return (
            self.import_token is not None
            and self.parameters_expire_at is not None
            and self.key_id == str(key_id)
        )

    def parameters_expired(self, now: datetime) -> bool:
        return self.parameters_expire_at is not None and now >= self.parameters_expire_at


# -- decisions (pure) ----------------------------------------------------------------------


class Step(enum.Enum):
    NOTHING = "nothing"
    ALREADY_IMPORTED = "already-imported"  # the spec changed after the import: not applied
    ISSUE = "issue"  # no parameters for this key yet
    WAIT = "wait"  # parameters valid, no material handed over
    IMPORT = "import"  # material handed over
    EXPIRE = "expire"  # our parameters expired before the material came


def settled(status: ImportStatus, generation: int | None) -> bool:
    """Nothing left to do for this generation (a restart or a no-op update changes nothing)."""
    if status.key_version is not None:
        return status.observed_generation == generation
    return status.observed_generation == generation and status.ready_reason in FINAL_REASONS


def next_step(
    spec: KeyMaterialImportSpec,
    status: ImportStatus,
    *,
    key_id: uuid.UUID,
    generation: int | None,
    now: datetime,
) -> Step:
    if status.key_version is not None:
        return Step.NOTHING if status.observed_generation == generation else Step.ALREADY_IMPORTED
    if settled(status, generation):
        return Step.NOTHING
    if not status.has_parameters_for(key_id):
        return Step.ISSUE
    expired = status.parameters_expired(now)
    if spec.handed_over:
        token = spec.import_token or status.import_token
        # A token of our own is known to be expired; any other one, the store judges.
        return Step.EXPIRE if expired and token == status.import_token else Step.IMPORT
    return Step.EXPIRE if expired else Step.WAIT


@dataclass(frozen=True)
class KeyProblem:
    reason: str
    message: str
    retry: bool


def key_problem(record: KeyRecord | None, namespace: str, name: str) -> KeyProblem | None:
    """Why ``spec.keyRef`` cannot take imported material now, or None."""
    where = f"CustomerMasterKey {namespace}/{name}"
    if record is None:
        return KeyProblem(
            KEY_NOT_FOUND, f"{where} does not exist (or has no key yet); retrying", retry=True
        )
    if record.origin is not Origin.EXTERNAL:
        return KeyProblem(
            KEY_NOT_EXTERNAL,
            f"{where} has origin {record.origin}: only keys of origin EXTERNAL take imported "
            "material (spec.origin is immutable: create a key with origin: EXTERNAL)",
            retry=False,
        )
    if record.is_default:
        return KeyProblem(
            conditions.DEFAULT_KEY_PROTECTED,
            f"{where} is a default key: default keys cannot be given imported material",
            retry=False,
        )
    if record.state is KeyState.PENDING_DELETION:
        return KeyProblem(
            KEY_PENDING_DELETION,
            f"{where} is pending deletion (at {rfc3339_or_none(record.deletion_date)}): "
            "no material is imported unless the deletion is cancelled; retrying",
            retry=True,
        )
    return None


def waiting_message(
    namespace: str, spec: KeyMaterialImportSpec, params_expire_at: datetime | None
) -> str:
    """Exactly what the user does next."""
    return (
        f"wrap exactly {MATERIAL_SIZE} bytes of key material (keep a backup: lost material is "
        f"lost data) with status.wrappingPublicKey ({spec.key_spec}) using "
        f"{spec.algorithm}; then set spec.importToken to status.importToken and hand the "
        "wrapped bytes over: inline as spec.encryptedKeyMaterial (base64 of wrapped.bin), or "
        f"in a Secret in namespace {namespace} (kubectl create secret generic <name> "
        "--from-file=encryptedKeyMaterial=wrapped.bin) named by "
        "spec.encryptedKeyMaterialSecretRef.name (and .key if not encryptedKeyMaterial), before "
        f"{rfc3339(params_expire_at) if params_expire_at else 'the parameters expire'}"
    )


def import_status(
    phase: str,
    ready: Condition,
    *,
    existing_conditions: Iterable[Mapping[str, Any]] | None,
    generation: int | None,
    now: datetime,
    fields: Mapping[str, Any] | None = None,
    extra_conditions: Iterable[Condition] = (),
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": phase,
        **(fields or {}),
        "conditions": conditions.merge_conditions(
            existing_conditions, [ready, *extra_conditions], generation=generation, now=now
        ),
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def parameters_fields(params: ImportParameters) -> dict[str, Any]:
    return {
        "keyId": str(params.key_id),
        "wrappingPublicKey": params.public_key_pem,
        "importToken": params.token,
        "parametersExpireAt": rfc3339(params.expires_at),
    }


def failure_of(exc: KmsError, valid_to: str | None) -> tuple[str, str, str]:
    """(phase, reason, message) for a refused import; messages never carry material."""
    if isinstance(exc, ExpiredImportToken):
        return EXPIRED, EXPIRED_IMPORT_TOKEN, f"{exc.message}: {RECREATE_HINT}"
    if isinstance(exc, IncorrectKeyMaterial):
        return (
            FAILED,
            INCORRECT_KEY_MATERIAL,
            f"{exc.message}. Wrap the key's material with status.wrappingPublicKey, update the "
            "Secret, then change the spec (spec.importToken, or another Secret name) to retry",
        )
    if isinstance(exc, InvalidImportToken):
        return (
            FAILED,
            INVALID_IMPORT_TOKEN,
            f"spec.importToken: {exc.message}; copy status.importToken into spec.importToken",
        )
    if isinstance(exc, InvalidRequest) and exc.field == "validTo":
        return FAILED, INVALID_REQUEST, f"spec.validTo {valid_to}: {exc.message}"
    if isinstance(exc, DefaultKeyProtected):
        return FAILED, conditions.DEFAULT_KEY_PROTECTED, exc.message
    if isinstance(exc, KeyPendingDeletion):
        return FAILED, KEY_PENDING_DELETION, exc.message
    return FAILED, exc.code, exc.message


def parameters_expired_message(expire_at: datetime) -> str:
    return (
        f"the wrapping public key and import token expired at {rfc3339(expire_at)} before "
        f"the material was handed over: {RECREATE_HINT}"
    )


def expiry_due(
    status: ImportStatus,
    *,
    material_present: bool,
    valid_to: datetime | None,
    now: datetime,
) -> tuple[str, str] | None:
    """(reason, message) when this import is Expired now, else None.

    ``material_present``: the store still holds the imported version's material;
    ``valid_to``: its expiry date (the store's while present, else the spec's).
    """
    if status.key_version is None:
        if status.ready_reason in _WAITING_REASONS and status.parameters_expired(now):
            assert status.parameters_expire_at is not None
            return PARAMETERS_EXPIRED, parameters_expired_message(status.parameters_expire_at)
        return None
    if not status.ready_status:
        return None
    reached = valid_to is not None and now >= valid_to
    if reached:
        assert valid_to is not None
        return (
            MATERIAL_EXPIRED,
            f"the material of key version {status.key_version} reached its validTo "
            f"{rfc3339(valid_to)} and is deleted: the key cannot decrypt what this version "
            "encrypted until the same material is imported again (a new KeyMaterialImport)",
        )
    if not material_present:
        return (
            MATERIAL_DELETED,
            f"the material of key version {status.key_version} is no longer in the store: "
            "import the same material again with a new KeyMaterialImport",
        )
    return None


def next_expiry(status: ImportStatus, valid_to: datetime | None) -> datetime | None:
    """The date the expiry daemon wakes up for."""
    if status.key_version is None:
        if status.ready_reason in _WAITING_REASONS:
            return status.parameters_expire_at
        return None
    return valid_to if status.ready_status else None


def holds_version(body: Mapping[str, Any], key_id: str, version: int, *, uid: str | None) -> bool:
    """Another live object (not ``uid``) that imported ``key_id`` version ``version``."""
    meta = body.get("metadata") or {}
    if meta.get("uid") == uid or meta.get("deletionTimestamp"):
        return False
    status = ImportStatus.parse(body.get("status") or {})
    return status.key_id == key_id and status.key_version == version and status.ready_status


# -- create / update / resume --------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one reconciliation writes: a phase, the Ready condition, fields, maybe a retry."""

    phase: str
    ready: Condition
    fields: Mapping[str, Any] = field(default_factory=dict)
    extra_conditions: tuple[Condition, ...] = ()
    retry_delay: float | None = None

    @property
    def event_type(self) -> str:
        normal = (WAITING_FOR_MATERIAL, MATERIAL_IMPORTED)
        return "Normal" if self.ready.reason in normal else "Warning"


def _not_ready(phase: str, reason: str, message: str, **kwargs: Any) -> Outcome:
    return Outcome(phase, Condition(conditions.READY, False, reason, message), **kwargs)


@kopf.on.resume(GROUP, VERSION, KMI_PLURAL, id="kmi-resume", registry=registry)
@kopf.on.create(GROUP, VERSION, KMI_PLURAL, id="kmi-create", registry=registry)
@kopf.on.update(GROUP, VERSION, KMI_PLURAL, id="kmi-update", registry=registry)
async def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    if body.meta.get("deletionTimestamp"):
        return  # kmi-delete owns terminating objects
    runtime: Runtime = memo.runtime
    status = ImportStatus.parse(body.status)
    generation = body.metadata.get("generation")
    if settled(status, generation):
        return  # a restart, or a change of metadata only
    outcome = await _decide(runtime, body, status, generation)
    patch.status.update(
        import_status(
            outcome.phase,
            outcome.ready,
            existing_conditions=body.status.get("conditions"),
            generation=generation,
            now=_now(runtime),
            fields=outcome.fields,
            extra_conditions=outcome.extra_conditions,
        )
    )
    if outcome.ready.reason != status.ready_reason:  # one Event per change, not per retry
        await _post_event(
            runtime, body, outcome.event_type, outcome.ready.reason, outcome.ready.message
        )
    if outcome.retry_delay is not None:
        raise kopf.TemporaryError(outcome.ready.message, delay=outcome.retry_delay)


async def _decide(
    runtime: Runtime, body: kopf.Body, status: ImportStatus, generation: int | None
) -> Outcome:
    namespace = body.metadata.namespace
    assert namespace is not None
    spec = KeyMaterialImportSpec.parse(body.spec)
    service = runtime.service
    if status.key_version is not None:
        return Outcome(
            IMPORTED if status.ready_status else EXPIRED,
            Condition(
                conditions.READY,
                status.ready_status,
                status.ready_reason or MATERIAL_IMPORTED,
                _ready_message(body.status.get("conditions")),
            ),
            extra_conditions=(
                Condition(
                    conditions.SYNCED,
                    False,
                    ALREADY_IMPORTED,
                    f"the spec changed after the import (generation {generation}): a "
                    "KeyMaterialImport imports once; create a new one to import again",
                ),
            ),
        )
    record = service.find(namespace, spec.key_name)
    problem = key_problem(record, namespace, spec.key_name)
    if problem is not None:
        return _not_ready(
            FAILED,
            problem.reason,
            problem.message,
            retry_delay=KEY_RETRY_DELAY if problem.retry else None,
        )
    assert record is not None
    fields: dict[str, Any] = {}
    step = next_step(spec, status, key_id=record.key_id, generation=generation, now=_now(runtime))
    if step is Step.ISSUE:
        try:
            params = await asyncio.to_thread(
                service.create_import_parameters, record.key_id, spec.algorithm, spec.key_spec
            )
        except KmsError as exc:
            raise _handler_error(exc) from None
        fields = parameters_fields(params)
        status = ImportStatus.parse({**body.status, **fields})
        step = next_step(
            spec, status, key_id=record.key_id, generation=generation, now=_now(runtime)
        )
    if step is Step.EXPIRE:
        assert status.parameters_expire_at is not None
        return _not_ready(
            EXPIRED, PARAMETERS_EXPIRED, parameters_expired_message(status.parameters_expire_at)
        )
    if step is Step.IMPORT:
        outcome = await _import(
            runtime,
            namespace=namespace,
            name=body.metadata.name,
            spec=spec,
            status=status,
            record=record,
        )
        return Outcome(
            outcome.phase,
            outcome.ready,
            {**fields, **outcome.fields},
            outcome.extra_conditions,
            outcome.retry_delay,
        )
    waiting = waiting_message(namespace, spec, status.parameters_expire_at)
    return _not_ready(WAITING, WAITING_FOR_MATERIAL, waiting, fields=fields)


async def _import(
    runtime: Runtime,
    *,
    namespace: str,
    name: str | None,
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
        return _not_ready(FAILED, INVALID_REQUEST, message)
    if spec.inline_material is not None:
        try:
            wrapped = base64.b64decode(spec.inline_material, validate=True)
        except (binascii.Error, ValueError):
            message = "spec.encryptedKeyMaterial is not base64: give the base64 of wrapped.bin"
            return _not_ready(FAILED, INVALID_REQUEST, message)
    else:
        assert spec.secret_name is not None
        try:
            wrapped = await asyncio.to_thread(
                Imports.sharing(runtime.objects).read_secret_value,
                namespace,
                spec.secret_name,
                spec.secret_key,
            )
        except SecretValueMissing as exc:
            message = (
                f"{exc}: create it with the wrapped material (spec.encryptedKeyMaterialSecretRef)"
            )
            return _not_ready(
                WAITING, MATERIAL_SECRET_NOT_FOUND, message, retry_delay=SECRET_RETRY_DELAY
            )
    try:
        updated, version = await asyncio.to_thread(
            runtime.service.import_material, record.key_id, token, wrapped, valid_to
        )
    except KmsError as exc:
        if exc.retryable:
            raise _handler_error(exc) from None
        phase, reason, message = failure_of(exc, spec.valid_to)
        retry = KEY_RETRY_DELAY if reason == KEY_PENDING_DELETION else None
        return _not_ready(phase, reason, message, retry_delay=retry)
    imported = updated.version(version)
    expires = imported.expires_at if imported else None
    message = (
        f"material imported into key {updated.namespace}/{updated.name} ({updated.key_id}) "
        f"version {version}; "
        + (f"it expires at {rfc3339(expires)}" if expires else "it does not expire")
    )
    await asyncio.to_thread(
        _publish_key,
        runtime,
        updated,
        MATERIAL_IMPORTED,
        f"material imported by KeyMaterialImport {name} as version {version}",
    )
    runtime.scheduler.wake()  # a validTo is a date the scheduler must time
    return Outcome(
        IMPORTED,
        Condition(conditions.READY, True, MATERIAL_IMPORTED, message),
        {"keyId": str(updated.key_id), "keyVersion": version},
        (Condition(conditions.SYNCED, True, conditions.APPLIED, "the material is imported"),),
    )


def _ready_message(existing: Iterable[Mapping[str, Any]] | None) -> str:
    ready = next((c for c in existing or () if c.get("type") == conditions.READY), {})
    return str(ready.get("message") or "imported")


def _now(runtime: Runtime) -> datetime:
    return runtime.service.clock.now()


def _handler_error(exc: KmsError) -> Exception:
    if exc.retryable:
        return kopf.TemporaryError(exc.message, delay=STORE_RETRY_DELAY)
    return kopf.PermanentError(exc.message)


async def _post_event(
    runtime: Runtime, body: Mapping[str, Any], type_: str, reason: str, message: str
) -> None:
    meta = body["metadata"]
    try:
        await asyncio.to_thread(
            Imports.sharing(runtime.objects).post_event,
            meta["namespace"],
            meta["name"],
            meta.get("uid"),
            type_=type_,
            reason=reason,
            message=message,
        )
    except Exception:
        log.exception(
            "could not post the %s event on %s/%s", reason, meta["namespace"], meta["name"]
        )


def _publish_key(runtime: Runtime, record: KeyRecord, reason: str, message: str) -> None:
    """Mirror a material change onto the CustomerMasterKey (status and an Event)."""
    try:
        publish_key_change(runtime.objects, record, reason, message, runtime.service.clock.now())
    except Exception:
        # The store holds the change; the key's object catches up on its next event.
        log.exception("could not publish %s of key %s to its object", reason, record.key_id)


# -- expiry --------------------------------------------------------------------------------


def _timed(status: kopf.Status, spec: kopf.Spec, **_: Any) -> bool:
    parsed = ImportStatus.parse(status)
    if parsed.key_version is None:
        return parsed.ready_reason in _WAITING_REASONS and parsed.parameters_expire_at is not None
    return parsed.ready_status and bool(spec.get("validTo"))


@kopf.daemon(
    GROUP,
    VERSION,
    KMI_PLURAL,
    id="kmi-expiry",
    registry=registry,
    when=_timed,
    # Stopped (filter no longer true, object deleted) it exits at once on ``stopped``; only a
    # stuck API call is cancelled, after the back-off.
    cancellation_backoff=2.0,
    cancellation_timeout=10.0,
)
async def expiry(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Sleep until the next expiry date, re-reading it (status, store) at least every so often."""
    runtime: Runtime = memo.runtime
    longest = min(30.0, runtime.settings.day_seconds / 4)
    while not stopped:
        try:
            delay = await asyncio.to_thread(_expire_if_due, runtime, dict(body))
        except Exception:
            log.exception(
                "expiry check of %s/%s failed; retrying",
                body.metadata.namespace,
                body.metadata.name,
            )
            delay = longest
        await stopped.wait(max(0.05, min(longest, delay)))


def _expire_if_due(runtime: Runtime, body: dict[str, Any]) -> float:
    """Mark the import Expired when its date passed; return seconds until the next check."""
    service = runtime.service
    meta = body["metadata"]
    raw = body.get("status") or {}
    status = ImportStatus.parse(raw)
    present, valid_to = True, None
    if status.key_version is not None and status.key_id is not None:
        try:
            record = service.get(uuid.UUID(status.key_id))
        except (NotFound, ValueError):
            return math.inf
        version = record.version(status.key_version)
        present = version is not None and version.state is VersionState.ENABLED
        if version is not None and version.expires_at is not None:
            valid_to = version.expires_at
        else:
            # The store's timer dropped the material and its date with it.
            try:
                valid_to = parse_rfc3339((body.get("spec") or {}).get("validTo"))
            except ValueError:
                valid_to = None
    now = service.clock.now()
    due = expiry_due(status, material_present=present, valid_to=valid_to, now=now)
    if due is None:
        wake_at = next_expiry(status, valid_to)
        return math.inf if wake_at is None else (wake_at - now).total_seconds()
    reason, message = due
    imports = Imports.sharing(runtime.objects)
    try:
        imports.patch_kmi_status(
            meta["namespace"],
            meta["name"],
            import_status(
                EXPIRED,
                Condition(conditions.READY, False, reason, message),
                existing_conditions=raw.get("conditions"),
                generation=None,
                now=now,
            ),
            resource_version=meta.get("resourceVersion"),
        )
    except Conflict:
        return CONFLICT_RETRY  # changed meanwhile: judge the fresh object
    imports.post_event(
        meta["namespace"], meta["name"], meta.get("uid"), type_="Warning", reason=reason,
        message=message,
    )  # fmt: skip
    return CONFLICT_RETRY


# -- deletion ------------------------------------------------------------------------------


@kopf.on.delete(GROUP, VERSION, KMI_PLURAL, id="kmi-delete", registry=registry)
async def delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Deleting the import deletes its material: the key goes to PendingImport."""
    runtime: Runtime = memo.runtime
    try:
        changed = await asyncio.to_thread(_delete_material, runtime, dict(body))
    except KmsError as exc:
        if exc.retryable:
            raise kopf.TemporaryError(exc.message, delay=STORE_RETRY_DELAY) from None
        log.warning(
            "material of %s/%s not deleted: %s",
            body.metadata.namespace,
            body.metadata.name,
            exc.message,
        )
        return
    if changed:
        runtime.scheduler.wake()


def not_own_key(
    record: KeyRecord, bound: KeyRecord | None, *, namespace: str, key_name: str
) -> str | None:
    """Why the key ``status.keyId`` names is not this import's to touch, or None if it is.

    ``bound``: the key ``spec.keyRef`` names in the import's namespace now. Status is not
    proof (anyone allowed to write it could name another key): the key must be in the same
    namespace, under the ``keyRef`` name, and be the one bound to that name (not detached).
    """
    if record.namespace != namespace or record.name != key_name:
        return f"status.keyId {record.key_id} is not the key of spec.keyRef {namespace}/{key_name}"
    if record.is_detached or bound is None or bound.key_id != record.key_id:
        return f"status.keyId {record.key_id} is not the key bound to {namespace}/{key_name} now"
    return None


def _delete_material(runtime: Runtime, body: dict[str, Any]) -> bool:
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid")
    status = ImportStatus.parse(body.get("status") or {})
    if status.key_id is None or status.key_version is None:
        return False  # nothing was imported
    service = runtime.service
    imports = Imports.sharing(runtime.objects)
    key_name = KeyMaterialImportSpec.parse(body.get("spec") or {}).key_name
    try:
        record = service.get(uuid.UUID(status.key_id))
    except (NotFound, ValueError):
        return False  # the key is destroyed (or status names no key): nothing left
    why = not_own_key(
        record, service.find(namespace, key_name), namespace=namespace, key_name=key_name
    )
    if why is not None:
        log.warning(
            "KeyMaterialImport %s/%s deleted: %s; no material deleted", namespace, name, why
        )
        try:
            imports.post_event(
                namespace, name, uid, type_="Warning", reason=NOT_OWN_KEY,
                message=f"{why}: no material was deleted (the status was not written by the "
                "operator, or the key was replaced)",
            )  # fmt: skip
        except Exception:
            log.exception("could not post the %s event on %s/%s", NOT_OWN_KEY, namespace, name)
        return False
    version = status.key_version
    held = record.version(version)
    if held is None or held.state is not VersionState.ENABLED:
        return False  # expired or deleted already
    holders = sorted(
        item["metadata"]["name"]
        for item in imports.list_kmis(namespace)
        if holds_version(item, status.key_id, version, uid=uid)
    )
    if holders:
        imports.post_event(
            namespace, name, uid, type_="Normal", reason=MATERIAL_KEPT,
            message=f"key version {version} keeps its material: KeyMaterialImport "
            f"{', '.join(holders)} imported it too",
        )  # fmt: skip
        return False
    updated = service.delete_imported_material(record.key_id, [version])
    message = (
        f"KeyMaterialImport {name} was deleted: the material of version {version} is deleted; "
        f"the key is {updated.state} and cannot decrypt what version {version} encrypted until "
        "the same material is imported again"
    )
    try:
        imports.post_event(
            namespace, name, uid, type_="Normal", reason=MATERIAL_DELETED, message=message
        )
    except Exception:
        log.exception("could not post the %s event on %s/%s", MATERIAL_DELETED, namespace, name)
    _publish_key(runtime, updated, MATERIAL_DELETED, message)
    return True

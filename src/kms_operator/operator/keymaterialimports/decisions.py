"""KeyMaterialImport's decisions, next to the reasons they use: the next step, what stands in
the key's way, how a refused import reads, when the import expires. Pure functions.

Decisions read the state the operator wrote (:class:`.views.ImportStatus`: phase, key
version, parameters and their date, the generation whose import was refused), never the text
of a reason. The one rule of settling: an import is done for a generation once its material is
imported, once it expired (parameters are never renewed), or once the spec as written was
refused (``Synced=False``); a failure that may go away (the key missing, pending deletion, the
Secret not there yet) is retried and never settles.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kms_operator.errors import (
    DefaultKeyProtected,
    ExpiredImportToken,
    IncorrectKeyMaterial,
    InvalidImportToken,
    InvalidRequest,
    KeyPendingDeletion,
    KmsError,
)
from kms_operator.keys.service import MATERIAL_SIZE
from kms_operator.store.records import ImportParameters, KeyRecord, KeyState, Origin
from kms_operator.timestamps import rfc3339, rfc3339_or_none

from .. import conditions
from ..conditions import Condition
from ..outcomes import Notice, Outcome, not_ready
from .views import ImportStatus, KeyMaterialImportSpec, Phase

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

KEY_RETRY_DELAY = 10.0  # the key does not exist yet, or is pending deletion (may be cancelled)
SECRET_RETRY_DELAY = 5.0  # the Secret named by the spec is not there yet
RECREATE_HINT = (
    "create a new KeyMaterialImport (delete this one and apply it again, or use another name) "
    "to get a new wrapping public key and import token"
)
_REFUSED = (
    "the import this spec describes is refused (Ready says why); a changed spec is tried again"
)


def import_outcome(
    phase: Phase,
    ready: Condition,
    *,
    fields: Mapping[str, Any] | None = None,
    extra_conditions: tuple[Condition, ...] = (),
    notices: tuple[Notice, ...] = (),
    retry_after: float | None = None,
) -> Outcome:
    """An outcome of this kind: its status fields always carry the phase."""
    return Outcome(
        ready,
        fields={"phase": phase.value, **(fields or {})},
        extra_conditions=extra_conditions,
        notices=notices,
        retry_after=retry_after,
    )


@dataclass(frozen=True)
class Failure:
    """Why there is no import (yet): the phase and reason to show, and what follows."""

    phase: Phase
    reason: str
    message: str
    #: The spec as written is refused: the import settles until the spec changes.
    refused: bool = False
    #: Retried after this many seconds (a problem that may go away); never settles.
    retry_after: float | None = None

    @property
    def retry(self) -> bool:
        return self.retry_after is not None

    def outcome(self) -> Outcome:
        """Ready False, a Warning once per change, and ``Synced=False`` when refused."""
        synced = Condition(conditions.SYNCED, False, self.reason, _REFUSED)
        return import_outcome(
            self.phase,
            not_ready(self.reason, self.message),
            extra_conditions=(synced,) if self.refused else (),
            notices=(Notice("Warning", self.reason, self.message, on_change=True),),
            retry_after=self.retry_after,
        )


# -- the next step --------------------------------------------------------------------------


class Step(enum.Enum):
    NOTHING = "nothing"
    ALREADY_IMPORTED = "already-imported"  # the spec changed after the import: not applied
    ISSUE = "issue"  # no parameters for this key yet
    WAIT = "wait"  # parameters valid, no material handed over
    IMPORT = "import"  # material handed over
    EXPIRE = "expire"  # our parameters expired before the material came


def settled(status: ImportStatus, generation: int | None) -> bool:
    """Nothing left to do for this generation (a restart or a no-op update changes nothing)."""
    if status.observed_generation != generation:
        return False
    return (
        status.key_version is not None
        or status.phase is Phase.EXPIRED
        or status.refused_generation == generation
    )


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


def key_problem(record: KeyRecord | None, namespace: str, name: str) -> Failure | None:
    """Why ``spec.keyRef`` cannot take imported material now, or None."""
    where = f"CustomerMasterKey {namespace}/{name}"
    if record is None:
        return Failure(
            Phase.FAILED,
            KEY_NOT_FOUND,
            f"{where} does not exist (or has no key yet); retrying",
            retry_after=KEY_RETRY_DELAY,
        )
    if record.origin is not Origin.EXTERNAL:
        return Failure(
            Phase.FAILED,
            KEY_NOT_EXTERNAL,
            f"{where} has origin {record.origin}: only keys of origin EXTERNAL take imported "
            "material (spec.origin is immutable: create a key with origin: EXTERNAL)",
            refused=True,
        )
    if record.is_default:
        return Failure(
            Phase.FAILED,
            conditions.DEFAULT_KEY_PROTECTED,
            f"{where} is a default key: default keys cannot be given imported material",
            refused=True,
        )
    if record.state is KeyState.PENDING_DELETION:
        return Failure(
            Phase.FAILED,
            KEY_PENDING_DELETION,
            f"{where} is pending deletion (at {rfc3339_or_none(record.deletion_date)}): "
            "no material is imported unless the deletion is cancelled; retrying",
            retry_after=KEY_RETRY_DELAY,
        )
    return None


def failure_of(exc: KmsError, valid_to: str | None) -> Failure:
    """How a refused import reads; messages never carry material."""
    if isinstance(exc, ExpiredImportToken):
        return Failure(Phase.EXPIRED, EXPIRED_IMPORT_TOKEN, f"{exc.message}: {RECREATE_HINT}")
    if isinstance(exc, IncorrectKeyMaterial):
        message = (
            f"{exc.message}. Wrap the key's material with status.wrappingPublicKey, update the "
            "Secret, then change the spec (spec.importToken, or another Secret name) to retry"
        )
        return Failure(Phase.FAILED, INCORRECT_KEY_MATERIAL, message, refused=True)
    if isinstance(exc, InvalidImportToken):
        message = f"spec.importToken: {exc.message}; copy status.importToken into spec.importToken"
        return Failure(Phase.FAILED, INVALID_IMPORT_TOKEN, message, refused=True)
    if isinstance(exc, InvalidRequest) and exc.field == "validTo":
        message = f"spec.validTo {valid_to}: {exc.message}"
        return Failure(Phase.FAILED, INVALID_REQUEST, message, refused=True)
    if isinstance(exc, DefaultKeyProtected):
        return Failure(Phase.FAILED, conditions.DEFAULT_KEY_PROTECTED, exc.message, refused=True)
    if isinstance(exc, KeyPendingDeletion):
        return Failure(Phase.FAILED, KEY_PENDING_DELETION, exc.message, retry_after=KEY_RETRY_DELAY)
    # Any other invalid request is the spec's too; the rest (the key gone meanwhile) is tried
    # again on the next event.
    return Failure(Phase.FAILED, exc.code, exc.message, refused=isinstance(exc, InvalidRequest))


def invalid_request(message: str) -> Failure:
    """A spec field the operator itself cannot read (validTo, the inline material)."""
    return Failure(Phase.FAILED, INVALID_REQUEST, message, refused=True)


# -- outcomes -------------------------------------------------------------------------------


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


def waiting(
    namespace: str,
    spec: KeyMaterialImportSpec,
    params_expire_at: datetime | None,
    fields: Mapping[str, Any],
) -> Outcome:
    message = waiting_message(namespace, spec, params_expire_at)
    return import_outcome(
        Phase.WAITING,
        not_ready(WAITING_FOR_MATERIAL, message),
        fields=fields,
        notices=(Notice("Normal", WAITING_FOR_MATERIAL, message, on_change=True),),
    )


def secret_missing(problem: str) -> Outcome:
    """The Secret named by the spec (or its key) is not there yet: still waiting, retried."""
    message = f"{problem}: create it with the wrapped material (spec.encryptedKeyMaterialSecretRef)"
    return import_outcome(
        Phase.WAITING,
        not_ready(MATERIAL_SECRET_NOT_FOUND, message),
        notices=(Notice("Warning", MATERIAL_SECRET_NOT_FOUND, message, on_change=True),),
        retry_after=SECRET_RETRY_DELAY,
    )


def parameters_expired_message(expire_at: datetime) -> str:
    return (
        f"the wrapping public key and import token expired at {rfc3339(expire_at)} before "
        f"the material was handed over: {RECREATE_HINT}"
    )


def parameters_expired(expire_at: datetime) -> Outcome:
    return Failure(
        Phase.EXPIRED, PARAMETERS_EXPIRED, parameters_expired_message(expire_at)
    ).outcome()


def parameters_fields(params: ImportParameters) -> dict[str, Any]:
    return {
        "keyId": str(params.key_id),
        "wrappingPublicKey": params.public_key_pem,
        "importToken": params.token,
        "parametersExpireAt": rfc3339(params.expires_at),
    }


def imported(record: KeyRecord, version: int) -> Outcome:
    held = record.version(version)
    expires = held.expires_at if held else None
    message = (
        f"material imported into key {record.namespace}/{record.name} ({record.key_id}) "
        f"version {version}; "
        + (f"it expires at {rfc3339(expires)}" if expires else "it does not expire")
    )
    return import_outcome(
        Phase.IMPORTED,
        Condition(conditions.READY, True, MATERIAL_IMPORTED, message),
        fields={"keyId": str(record.key_id), "keyVersion": version},
        extra_conditions=(
            Condition(conditions.SYNCED, True, conditions.APPLIED, "the material is imported"),
        ),
        notices=(Notice("Normal", MATERIAL_IMPORTED, message, on_change=True),),
    )


def already_imported(
    status: ImportStatus,
    existing_conditions: Iterable[Mapping[str, Any]] | None,
    generation: int | None,
) -> Outcome:
    """The spec changed after the import: Ready stays as it is, ``Synced=False`` says why."""
    message = str(
        conditions.find_condition(existing_conditions, conditions.READY).get("message")
        or "imported"
    )
    ready = Condition(
        conditions.READY, status.ready_status, status.ready_reason or MATERIAL_IMPORTED, message
    )
    return import_outcome(
        Phase.IMPORTED if status.ready_status else Phase.EXPIRED,
        ready,
        extra_conditions=(
            Condition(
                conditions.SYNCED,
                False,
                ALREADY_IMPORTED,
                f"the spec changed after the import (generation {generation}): a "
                "KeyMaterialImport imports once; create a new one to import again",
            ),
        ),
        notices=(
            Notice(
                "Normal" if status.ready_status else "Warning",
                ready.reason,
                message,
                on_change=True,
            ),
        ),
    )


# -- expiry ---------------------------------------------------------------------------------


def expiry_watched(status: ImportStatus, *, valid_to: str | None) -> bool:
    """Whether the expiry daemon runs: parameters waiting for material, or material that
    expires at ``spec.validTo``."""
    if status.key_version is None:
        return status.phase is Phase.WAITING and status.parameters_expire_at is not None
    return status.phase is Phase.IMPORTED and bool(valid_to)


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
        if status.phase is Phase.WAITING and status.parameters_expired(now):
            assert status.parameters_expire_at is not None
            return PARAMETERS_EXPIRED, parameters_expired_message(status.parameters_expire_at)
        return None
    if status.phase is not Phase.IMPORTED:
        return None
    if valid_to is not None and now >= valid_to:
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
        return status.parameters_expire_at if status.phase is Phase.WAITING else None
    return valid_to if status.phase is Phase.IMPORTED else None


def expired(reason: str, message: str) -> Outcome:
    """What the expiry daemon writes (a Warning Event, posted once: the daemon then stops)."""
    return Failure(Phase.EXPIRED, reason, message).outcome()

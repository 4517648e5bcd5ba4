"""DataKey's decisions, next to the reasons they use: status, the timer's question, what to
announce. Pure functions: the reconciliation gathers the inputs and applies the result.

Every outcome names its Ready reason and its Events; a Warning that repeats the Ready
condition is ``on_change`` (posted when the reason changes, not on every retry).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kms_operator.contract import DEFAULT_LABEL
from kms_operator.errors import InvalidCiphertext, KmsError
from kms_operator.keys.service import refuse_state
from kms_operator.store.records import KeyRecord, KeyState

from .. import conditions
from ..conditions import Condition
from ..outcomes import RETRY_DELAY, Notice, Outcome, not_ready, status_patch
from .views import DEFAULT_KEY_ALIAS, DEFAULT_KEY_NAME, DataKeyView

# Reasons (conditions and Events).
SECRET_READY = "SecretReady"  # noqa: S105 - a name, not a secret
GENERATED = "Generated"
REGENERATED = "Regenerated"
RE_ENCRYPTED = "ReEncrypted"
SECRET_UPDATED = "SecretUpdated"  # noqa: S105 - a name, not a secret
SECRET_MOVED = "SecretMoved"  # noqa: S105 - a name, not a secret
SECRET_CONFLICT = "SecretConflict"  # noqa: S105 - a name, not a secret
SECRET_WRITE_FAILED = "SecretWriteFailed"  # noqa: S105 - a name, not a secret
KEY_NOT_FOUND = "KeyNotFound"
DEFAULT_KEY_CREATED = "DefaultKeyCreated"
WAITING_FOR_DEFAULT_KEY = "WaitingForDefaultKey"
DEFAULT_KEY_UNAVAILABLE = "DefaultKeyUnavailable"
AUDIT_FAILED = "AuditFailed"
NAMESPACE_UNREADABLE = "NamespaceUnreadable"
INVALID_CIPHERTEXT = InvalidCiphertext.code
# Ready reasons under which the timer waits for the key to change before trying again.
_WAITING_FOR_THE_KEY = {KEY_NOT_FOUND, DEFAULT_KEY_UNAVAILABLE}

#: Seconds between two looks for the default key while its object is being reconciled (and
#: before another try at a Secret that kept changing while being written).
DEFAULT_KEY_WAIT = 1.0


@dataclass(frozen=True)
class KeyNotice:
    """An Event for the CustomerMasterKey ``namespace/name`` of a key that refused."""

    namespace: str
    name: str
    notice: Notice


@dataclass(frozen=True)
class Reconciliation:
    """What one reconciliation found: the DataKey's outcome, and the Events owed to its key
    (who still depends on a refused key), posted only when the Ready reason changes."""

    outcome: Outcome
    key_notices: tuple[KeyNotice, ...] = ()


def needs_reconcile(status: Mapping[str, Any], record: KeyRecord | None) -> bool:
    """The timer's question, answered from memory: does the key differ from what status says?"""
    ready = conditions.find_condition(status.get("conditions"), conditions.READY)
    if not ready:
        return True
    reason = ready.get("reason")
    if record is None:
        return reason not in _WAITING_FOR_THE_KEY
    if record.state is not KeyState.ENABLED:
        return reason != refuse_state(record, "use").code
    return (
        ready.get("status") != "True"
        or status.get("keyId") != str(record.key_id)
        or status.get("keyVersion") != record.current_version
    )


def datakey_status(
    outcome: Outcome,
    *,
    secret_name: str,
    existing_conditions: Iterable[Mapping[str, Any]] | None,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    """``status`` for a merge patch: fields not known this time are left as they are."""
    return {
        "secretName": secret_name,
        **status_patch(
            outcome, existing_conditions=existing_conditions, generation=generation, now=now
        ),
    }


def bound_fields(key_id: uuid.UUID, key_version: int | None = None) -> dict[str, Any]:
    """The status fields naming the key (and version) the Secret's data key is under."""
    fields: dict[str, Any] = {"keyId": str(key_id)}
    if key_version is not None:
        fields["keyVersion"] = key_version
    return fields


def _warning(
    reason: str,
    message: str,
    *,
    fields: Mapping[str, Any] | None = None,
    retry_after: float | None = None,
) -> Outcome:
    """Ready False, said once per change as a Warning Event."""
    return Outcome(
        not_ready(reason, message),
        fields=dict(fields or {}),
        notices=(Notice("Warning", reason, message, on_change=True),),
        retry_after=retry_after,
    )


# -- the key --------------------------------------------------------------------------------


def namespace_unreadable(namespace: str, error: str) -> Outcome:
    message = f"could not read namespace {namespace} ({error}), which binds keys to it; retrying"
    return Outcome(not_ready(NAMESPACE_UNREADABLE, message), retry_after=RETRY_DELAY)


def key_not_found(view: DataKeyView) -> Outcome:
    return _warning(
        KEY_NOT_FOUND,
        f"no CustomerMasterKey {view.spec.reference!r} with a live key in namespace "
        f"{view.namespace}; the DataKey waits for it",
    )


def default_key_created() -> Notice:
    return Notice(
        "Normal",
        DEFAULT_KEY_CREATED,
        f"created CustomerMasterKey {DEFAULT_KEY_NAME} ({DEFAULT_KEY_ALIAS}), the namespace's "
        "default key for DataKeys",
    )


def default_key_unavailable() -> Outcome:
    return _warning(
        DEFAULT_KEY_UNAVAILABLE,
        f"CustomerMasterKey {DEFAULT_KEY_NAME} exists but is not a default key (label "
        f"{DEFAULT_LABEL}=true and alias {DEFAULT_KEY_ALIAS}): give the DataKey a keyRef or "
        "rename that key",
    )


def waiting_for_default_key(notices: Iterable[Notice]) -> Outcome:
    message = f"waiting for the default key {DEFAULT_KEY_NAME} ({DEFAULT_KEY_ALIAS})"
    return Outcome(
        not_ready(WAITING_FOR_DEFAULT_KEY, message),
        notices=tuple(notices),
        retry_after=DEFAULT_KEY_WAIT,
    )


def refused(view: DataKeyView, record: KeyRecord, exc: KmsError) -> Reconciliation:
    """A key that refuses: Ready False with the KMS code, and the dependency made visible."""
    user = f"DataKey {view.namespace}/{view.name} (Secret {view.spec.secret_name})"
    on_key = Notice(
        "Warning",
        exc.code,
        f"{user} still depends on this key ({record.state}): its data key cannot be "
        "generated, decrypted nor re-encrypted",
        on_change=True,
    )
    message = f"{exc.message}; {user} depends on it"
    return Reconciliation(
        _warning(exc.code, message, fields=bound_fields(record.key_id)),
        key_notices=(KeyNotice(record.namespace, record.name, on_key),),
    )


# -- the Secret -----------------------------------------------------------------------------


def secret_conflict(view: DataKeyView) -> Outcome:
    return _warning(
        SECRET_CONFLICT,
        f"Secret {view.namespace}/{view.spec.secret_name} exists and is not owned by this "
        "DataKey: it is left untouched; delete it or choose another spec.secretName",
    )


def secret_moved(previous: str, view: DataKeyView) -> Notice:
    return Notice(
        "Normal",
        SECRET_MOVED,
        f"the data key of Secret {previous} is now also in Secret {view.spec.secret_name}",
    )


def generated(view: DataKeyView, key_id: uuid.UUID, version: int) -> Notice:
    """A new data key: a Warning when the DataKey had one before (it is lost), else Normal."""
    if view.status.get("keyVersion") is not None:
        return Notice(
            "Warning",
            REGENERATED,
            f"Secret {view.spec.secret_name} or its ciphertext was gone: a NEW data key was "
            f"generated under key {key_id} version {version}; data encrypted with the previous "
            "data key cannot be decrypted with this one",
        )
    return Notice(
        "Normal",
        GENERATED,
        f"data key generated under key {key_id} version {version} into Secret "
        f"{view.spec.secret_name}",
    )


def invalid_ciphertext(view: DataKeyView, key_id: uuid.UUID) -> Outcome:
    return _warning(
        INVALID_CIPHERTEXT,
        f"the ciphertext in Secret {view.spec.secret_name} does not decrypt with this "
        "DataKey's encryption context: it is left as it is (no new data key is made behind "
        "your back); delete the Secret to get a new data key",
        fields=bound_fields(key_id),
    )


def re_encrypted(
    view: DataKeyView, source: tuple[uuid.UUID, int], destination: tuple[uuid.UUID, int]
) -> Notice:
    return Notice(
        "Normal",
        RE_ENCRYPTED,
        f"ciphertext in Secret {view.spec.secret_name} re-encrypted from key {source[0]} "
        f"version {source[1]} to key {destination[0]} version {destination[1]}; the data key "
        "is unchanged",
    )


def secret_updated(view: DataKeyView) -> Notice:
    return Notice("Normal", SECRET_UPDATED, f"Secret {view.spec.secret_name} brought up to date")


def secret_ready(
    view: DataKeyView, key_id: uuid.UUID, version: int, notices: Iterable[Notice]
) -> Outcome:
    ready = Condition(
        conditions.READY,
        True,
        SECRET_READY,
        f"Secret {view.spec.secret_name} holds the data key, encrypted under key {key_id} "
        f"version {version}",
    )
    return Outcome(ready, fields=bound_fields(key_id, version), notices=tuple(notices))


# -- failures -------------------------------------------------------------------------------


def audit_failed(message: str) -> Outcome:
    return _warning(AUDIT_FAILED, message, retry_after=RETRY_DELAY)


def secret_write_failed(message: str) -> Outcome:
    return _warning(SECRET_WRITE_FAILED, message, retry_after=RETRY_DELAY)


def domain_error(exc: KmsError) -> Outcome:
    """A refusal the spec can cure is ``InvalidSpec``; a transient failure is retried."""
    if not exc.retryable:
        return _warning(conditions.INVALID_SPEC, exc.message)
    return Outcome(not_ready(conditions.ERROR, exc.message), retry_after=RETRY_DELAY)


def kept_changing(view: DataKeyView) -> Outcome:
    message = f"Secret {view.spec.secret_name} kept changing while being written"
    return Outcome(not_ready(conditions.ERROR, message), retry_after=DEFAULT_KEY_WAIT)

"""Kopf handlers for ``DataKey``: a data key generated under a key, delivered in an owned Secret.

* create / resume / update: resolve ``spec.keyRef`` (absent: the namespace's default key, whose
  CustomerMasterKey object this module creates), then make the owned Secret hold the data key:
  generated once, never again while the Secret keeps its ciphertext (a restart decrypts what is
  there instead); the ciphertext is re-encrypted when the key's current version moves on;
* a timer per DataKey (every :data:`CHECK_INTERVAL` s) compares ``status.keyVersion`` and the
  key's state with the key service's in-memory records and reconciles only on a difference
  (rotation, a key disabled, pending deletion or back), plus a full check every
  :data:`RESYNC_INTERVAL` s (a Secret deleted by hand). No Secret is listed or watched.
* deletion: the Secret carries a controller ownerReference, so Kubernetes' garbage collector
  removes it with the DataKey; no finalizer.

Before it resolves its key, a reconciliation tells the key service the namespace's UID
(:meth:`KeyService.observe_namespace`), so a key left by an earlier namespace of the same name
is never used. A blob in the Secret counts only if it names a key of the DataKey's own
namespace (any other is ``InvalidCiphertext``). Every data key generated, decrypted or
re-encrypted writes one audit line naming the DataKey (the API's JSON format, caller
:data:`OPERATOR_CALLER`), before the result is used: if the line cannot be written, the Secret
is not written either (fail-closed) and the DataKey says so (reason ``AuditFailed``).

The desired Secret, the encryption context, the status and the timer's decision are pure
functions below; the handlers only gather inputs, call the key service and apply the result.
The plaintext data key goes only into the Secret: never into a log line, Event, status or error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import kopf

from kms_operator.contract import (
    API_VERSION,
    CMK_KIND,
    CONTEXT_ANNOTATION,
    DATAKEY_CONTEXT,
    DATAKEY_LABEL,
    DEFAULT_LABEL,
    DK_KIND,
    DK_PLURAL,
    GROUP,
    KEY_ID_ANNOTATION,
    KEY_VERSION_ANNOTATION,
    MANAGED_BY,
    NAMESPACE_CONTEXT,
    SECRET_CIPHERTEXT_KEY,
    SECRET_PLAINTEXT_KEY,
    SECRET_TYPE,
    VERSION,
)
from kms_operator.crypto import blob as blobs
from kms_operator.errors import InvalidCiphertext, KeyStateError, KmsError, NotFound
from kms_operator.keys.service import (
    DEFAULT_ALIAS_PREFIX,
    DataKeyResult,
    DecryptResult,
    KeyService,
    ReEncryptResult,
    refuse_state,
)
from kms_operator.kube.objects import NamespaceInfo
from kms_operator.kube.secrets import SecretRaced, Secrets, SecretWriteFailed
from kms_operator.serving.audit import AuditRecord
from kms_operator.store.records import KeyRecord, KeyState

from . import conditions
from .conditions import Condition
from .registries import registry
from .runtime import Runtime

log = logging.getLogger(__name__)

DEFAULT_SERVICE = "datakeys"
DEFAULT_KEY_NAME = f"kms-default-{DEFAULT_SERVICE}"
DEFAULT_KEY_ALIAS = f"{DEFAULT_ALIAS_PREFIX}{DEFAULT_SERVICE}"

#: Seconds between two checks of a DataKey against its key (in memory, no API call).
CHECK_INTERVAL = 5.0
#: Seconds between two full reconciliations (one Secret GET) when nothing seems to change.
RESYNC_INTERVAL = 300.0
#: Seconds between two looks for the default key while its object is being reconciled.
DEFAULT_KEY_WAIT = 1.0
#: Seconds before a retry after the API server or the store refused.
ERROR_RETRY = 10.0
_ATTEMPTS = 3
#: Seconds a namespace's UID is trusted before it is read again.
NAMESPACE_UID_TTL = 5.0
#: Namespaces whose UID is remembered at once (the least recently used is forgotten first).
NAMESPACE_UID_ENTRIES = 1024
#: The ``caller`` of the operator's own audit lines.
OPERATOR_CALLER = "system:kms-operator"

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


# -- the spec -----------------------------------------------------------------------------


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
        return _condition(self.status, conditions.READY)


# -- pure pieces ---------------------------------------------------------------------------


def encryption_context(namespace: str, name: str, user: Mapping[str, str]) -> dict[str, str]:
    """The user's context plus the DataKey's strict scope (DESIGN.md section 4); ours win."""
    return {**user, NAMESPACE_CONTEXT: namespace, DATAKEY_CONTEXT: name}


def label_value(name: str) -> str:
    """A DataKey name as a label value (at most 63 characters: longer names are hashed)."""
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[:52].rstrip('.-')}-{digest}"


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": DK_KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def desired_secret(
    view: DataKeyView,
    *,
    ciphertext: bytes,
    plaintext: bytes | None,
    key_id: uuid.UUID,
    key_version: int,
) -> dict[str, Any]:
    """The Secret as it must be (cert-manager style: built from inputs, then applied)."""
    spec = view.spec
    context = encryption_context(view.namespace, view.name, spec.encryption_context)
    data = {SECRET_CIPHERTEXT_KEY: _b64(ciphertext)}
    if spec.include_plaintext and plaintext is not None:
        data[SECRET_PLAINTEXT_KEY] = _b64(plaintext)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SECRET_TYPE,
        "metadata": {
            "name": spec.secret_name,
            "namespace": view.namespace,
            "labels": {**spec.labels, DATAKEY_LABEL: label_value(view.name)},
            "annotations": {
                **spec.annotations,
                KEY_ID_ANNOTATION: str(key_id),
                KEY_VERSION_ANNOTATION: str(key_version),
                # The exact AAD text the blob was sealed with, for decrypting through the API.
                CONTEXT_ANNOTATION: blobs.canonical_context(context).decode("utf-8"),
            },
            "ownerReferences": [owner_reference(view.name, view.uid)],
        },
        "data": data,
    }


def secret_update(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """The body to PUT over ``current`` so it matches ``desired``; None when nothing changes.

    Labels and annotations are merged (others' stay; ours and the template's win); the data and
    our ownerReference are set exactly. The type and ``resourceVersion`` are kept from
    ``current``: the type is immutable and the version makes a concurrent write fail, not win.
    """
    meta = current.get("metadata") or {}
    wanted = desired["metadata"]
    labels = {**(meta.get("labels") or {}), **wanted["labels"]}
    annotations = {**(meta.get("annotations") or {}), **wanted["annotations"]}
    ours = wanted["ownerReferences"][0]
    owners = [r for r in meta.get("ownerReferences") or () if r.get("uid") != ours["uid"]]
    owners.append(ours)
    if (
        labels == (meta.get("labels") or {})
        and annotations == (meta.get("annotations") or {})
        and owners == list(meta.get("ownerReferences") or ())
        and dict(current.get("data") or {}) == desired["data"]
    ):
        return None
    body = dict(current)
    body["metadata"] = {
        **meta,
        "labels": labels,
        "annotations": annotations,
        "ownerReferences": owners,
    }
    body["data"] = dict(desired["data"])
    return body


def owned_by(secret: Mapping[str, Any], uid: str) -> bool:
    refs = (secret.get("metadata") or {}).get("ownerReferences") or ()
    return any(ref.get("uid") == uid for ref in refs)


def ciphertext_of(secret: Mapping[str, Any] | None) -> bytes | None:
    """The blob under ``ciphertext``; None when absent or empty; b"" when not base64."""
    if secret is None:
        return None
    raw = (secret.get("data") or {}).get(SECRET_CIPHERTEXT_KEY)
    if not raw:
        return None
    try:
        return base64.b64decode(raw, validate=True) or None
    except (binascii.Error, ValueError):
        return b""


def default_key_object(namespace: str) -> dict[str, Any]:
    """The namespace's default key for DataKeys, as a CustomerMasterKey everyone can see."""
    return {
        "apiVersion": API_VERSION,
        "kind": CMK_KIND,
        "metadata": {
            "name": DEFAULT_KEY_NAME,
            "namespace": namespace,
            "labels": {DEFAULT_LABEL: "true", "app.kubernetes.io/managed-by": MANAGED_BY},
        },
        "spec": {
            "description": (
                f"Default key for DataKeys without keyRef in namespace {namespace} "
                "(created by kms-operator)"
            ),
            "aliases": [DEFAULT_KEY_ALIAS],
        },
    }


def is_default_key_object(body: Mapping[str, Any]) -> bool:
    meta = body.get("metadata") or {}
    aliases = (body.get("spec") or {}).get("aliases") or ()
    return (meta.get("labels") or {}).get(DEFAULT_LABEL) == "true" and DEFAULT_KEY_ALIAS in aliases


def needs_reconcile(status: Mapping[str, Any], record: KeyRecord | None) -> bool:
    """The timer's question, answered from memory: does the key differ from what status says?"""
    ready = _condition(status, conditions.READY)
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


@dataclass(frozen=True)
class Notice:
    """An Event to post; ``on_change`` ones only when the Ready reason changes (no spam)."""

    type: str
    reason: str
    message: str
    on_change: bool = False


@dataclass
class Outcome:
    """What one reconciliation found: the Ready condition, the binding and what to announce."""

    ready: Condition
    key_id: uuid.UUID | None = None
    key_version: int | None = None
    notices: list[Notice] = field(default_factory=list)
    #: Notices for a key's object (namespace, name): who still depends on a refused key.
    key_notices: list[tuple[str, str, Notice]] = field(default_factory=list)
    #: When set, the handler retries after this many seconds (TemporaryError).
    retry_after: float | None = None


def datakey_status(
    outcome: Outcome,
    *,
    secret_name: str,
    existing_conditions: Any,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    """``status`` for a merge patch: fields not known this time are left as they are."""
    status: dict[str, Any] = {
        "secretName": secret_name,
        "conditions": conditions.merge_conditions(
            existing_conditions, [outcome.ready], generation=generation, now=now
        ),
    }
    if outcome.key_id is not None:
        status["keyId"] = str(outcome.key_id)
    if outcome.key_version is not None:
        status["keyVersion"] = outcome.key_version
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def notices_to_post(outcome: Outcome, previous_ready: Mapping[str, Any]) -> list[Notice]:
    changed = previous_ready.get("reason") != outcome.ready.reason
    return [n for n in outcome.notices if changed or not n.on_change]


# -- namespaces ------------------------------------------------------------------------------


class NamespaceUids:
    """Each namespace's UID, read through ``lookup`` and trusted for ``ttl`` seconds.

    At most ``entries`` namespaces are remembered; a namespace that does not exist is never
    remembered. ``clock`` is monotonic seconds (injected in tests).
    """

    def __init__(
        self,
        lookup: Callable[[str], NamespaceInfo | None],
        *,
        ttl: float = NAMESPACE_UID_TTL,
        entries: int = NAMESPACE_UID_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._entries = entries
        self._clock = clock
        self._known: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def uid(self, namespace: str) -> str | None:
        """The namespace's UID, or None when it does not exist."""
        now = self._clock()
        with self._lock:
            known = self._known.get(namespace)
            if known is not None and now - known[1] < self._ttl:
                self._known.move_to_end(namespace)
                return known[0]
        info = self._lookup(namespace)  # an API call: outside the lock
        with self._lock:
            if info is None:
                self._known.pop(namespace, None)
                return None
            self._known[namespace] = (info.uid, now)
            self._known.move_to_end(namespace)
            while len(self._known) > self._entries:
                self._known.popitem(last=False)
        return info.uid


# -- audit ---------------------------------------------------------------------------------

_AUDIT_PREFIX = f"dk-{os.urandom(4).hex()}"
_audit_numbers = itertools.count(1)
_Result = TypeVar("_Result", DataKeyResult, DecryptResult, ReEncryptResult)


@dataclass(slots=True)
class DataKeyAuditRecord(AuditRecord):
    """An API audit line plus ``dataKey``: the ``namespace/name`` of the DataKey served."""

    data_key: str | None = None

    def to_json(self, now: float | None = None) -> str:
        line = AuditRecord.to_json(self, now)
        return f'{line[:-1]},"dataKey":{json.dumps(self.data_key)}}}'


class AuditNotWritten(Exception):
    """The audit line of an operation could not be written: its result must not be used."""


def audited(
    runtime: Runtime,
    view: DataKeyView,
    operation: str,
    key: KeyRecord | None,
    call: Callable[[], _Result],
    *,
    source: KeyRecord | None = None,
) -> _Result:
    """Run one key service operation for ``view`` and write its audit line, allowed or not.

    Raises :class:`AuditNotWritten` when the line cannot be written (the result is dropped),
    else returns the result or re-raises the service's refusal.
    """
    entry = DataKeyAuditRecord(
        operation,
        f"{_AUDIT_PREFIX}-{next(_audit_numbers)}",
        caller=OPERATOR_CALLER,
        namespace=view.namespace,
        data_key=f"{view.namespace}/{view.name}",
    )
    if key is not None:
        entry.key_name, entry.key_id = key.name, str(key.key_id)
    if source is not None:
        entry.source_namespace, entry.source_key_name = source.namespace, source.name
        entry.source_key_id = str(source.key_id)
    try:
        result = call()
    except KmsError as exc:
        entry.outcome, entry.error_code = "error", exc.code
        _write_audit(runtime, entry)
        raise
    entry.outcome = "allowed"
    entry.key_id, entry.key_version = str(result.key_id), result.key_version
    if isinstance(result, ReEncryptResult):
        entry.source_key_id = str(result.source_key_id)
        entry.source_key_version = result.source_key_version
    _write_audit(runtime, entry)
    return result


def _write_audit(runtime: Runtime, entry: DataKeyAuditRecord) -> None:
    try:
        runtime.audit.write(entry)
    except Exception as exc:
        log.error(
            "the audit line of %s for DataKey %s could not be written (%s): its result is not used",
            entry.operation,
            entry.data_key,
            type(exc).__name__,
        )
        raise AuditNotWritten(
            f"the audit line of {entry.operation} could not be written, so its result was "
            "not used (the audit is fail-closed); retrying"
        ) from None


# -- reconciliation (synchronous: runs in a thread) ----------------------------------------


def reconcile(
    runtime: Runtime, secrets: Secrets, namespaces: NamespaceUids, view: DataKeyView
) -> Outcome:
    """Make the owned Secret hold the data key; retried when someone writes it meanwhile."""
    for _ in range(_ATTEMPTS):
        try:
            return _reconcile_once(runtime, secrets, namespaces, view)
        except SecretRaced as exc:
            log.debug("DataKey %s/%s: %s; trying again", view.namespace, view.name, exc)
        except AuditNotWritten as exc:
            return Outcome(
                _not_ready(AUDIT_FAILED, str(exc)),
                notices=[Notice("Warning", AUDIT_FAILED, str(exc), on_change=True)],
                retry_after=ERROR_RETRY,
            )
        except SecretWriteFailed as exc:
            return Outcome(
                _not_ready(SECRET_WRITE_FAILED, str(exc)),
                notices=[Notice("Warning", SECRET_WRITE_FAILED, str(exc), on_change=True)],
                retry_after=ERROR_RETRY,
            )
        except KmsError as exc:
            if not exc.retryable:
                return Outcome(
                    _not_ready(conditions.INVALID_SPEC, exc.message),
                    notices=[Notice("Warning", conditions.INVALID_SPEC, exc.message, True)],
                )
            return Outcome(_not_ready(conditions.ERROR, exc.message), retry_after=ERROR_RETRY)
    message = f"Secret {view.spec.secret_name} kept changing while being written"
    return Outcome(_not_ready(conditions.ERROR, message), retry_after=DEFAULT_KEY_WAIT)


def _reconcile_once(
    runtime: Runtime, secrets: Secrets, namespaces: NamespaceUids, view: DataKeyView
) -> Outcome:
    service = runtime.service
    found = _key_for(runtime, namespaces, view)
    if isinstance(found, Outcome):
        return found
    record = found

    spec, namespace = view.spec, view.namespace
    context = encryption_context(namespace, view.name, spec.encryption_context)
    secret = secrets.get(namespace, spec.secret_name)
    if secret is not None and not owned_by(secret, view.uid):
        message = (
            f"Secret {namespace}/{spec.secret_name} exists and is not owned by this DataKey: "
            "it is left untouched; delete it or choose another spec.secretName"
        )
        return Outcome(
            _not_ready(SECRET_CONFLICT, message),
            notices=[Notice("Warning", SECRET_CONFLICT, message, on_change=True)],
        )
    notices: list[Notice] = []
    blob = ciphertext_of(secret)
    previous = view.status.get("secretName")
    if blob is None and previous and previous != spec.secret_name:
        # spec.secretName was set after the fact: keep the data key of the earlier Secret.
        earlier = secrets.get(namespace, previous)
        if earlier is not None and owned_by(earlier, view.uid):
            blob = ciphertext_of(earlier)
            if blob:
                notices.append(
                    Notice(
                        "Normal",
                        SECRET_MOVED,
                        f"the data key of Secret {previous} is now also in Secret "
                        f"{spec.secret_name}",
                    )
                )

    plaintext: bytes | None
    if blob is None:
        try:
            generated = audited(
                runtime,
                view,
                "generate-data-key",
                record,
                lambda: service.generate_data_key(
                    namespace,
                    record.key_id,
                    key_spec=spec.key_spec,
                    number_of_bytes=spec.number_of_bytes,
                    context=context,
                ),
            )
        except KeyStateError as exc:
            return _refused(view, record, exc)
        blob, plaintext = generated.ciphertext_blob, generated.plaintext
        key_id, version = generated.key_id, generated.key_version
        if view.status.get("keyVersion") is not None:
            notices.append(
                Notice(
                    "Warning",
                    REGENERATED,
                    f"Secret {spec.secret_name} or its ciphertext was gone: a NEW data key was "
                    f"generated under key {key_id} version {version}; data encrypted with the "
                    "previous data key cannot be decrypted with this one",
                )
            )
        else:
            notices.append(
                Notice(
                    "Normal",
                    GENERATED,
                    f"data key generated under key {key_id} version {version} into Secret "
                    f"{spec.secret_name}",
                )
            )
        log.info(
            "DataKey %s/%s: generated a data key under key %s version %d",
            namespace,
            view.name,
            key_id,
            version,
        )
    else:
        sealed = blob
        owner = key_of_blob_in(service, sealed, namespace)
        try:
            opened = audited(
                runtime, view, "decrypt", owner, lambda: _decrypt(service, owner, sealed, context)
            )
        except InvalidCiphertext:
            message = (
                f"the ciphertext in Secret {spec.secret_name} does not decrypt with this "
                "DataKey's encryption context: it is left as it is (no new data key is made "
                "behind your back); delete the Secret to get a new data key"
            )
            return Outcome(
                _not_ready(INVALID_CIPHERTEXT, message),
                key_id=record.key_id,
                notices=[Notice("Warning", INVALID_CIPHERTEXT, message, on_change=True)],
            )
        except KeyStateError as exc:
            assert owner is not None  # only a key of this namespace refuses by its state
            return _refused(view, owner, exc)
        plaintext = opened.plaintext
        key_id, version = opened.key_id, opened.key_version
        if (key_id, version) != (record.key_id, record.current_version):
            assert owner is not None
            try:
                moved = audited(
                    runtime,
                    view,
                    "re-encrypt",
                    record,
                    lambda: service.re_encrypt(
                        sealed,
                        namespace,
                        record.key_id,
                        source_context=context,
                        destination_context=context,
                    ),
                    source=owner,
                )
            except KeyStateError as exc:
                return _refused(view, record, exc)
            blob, key_id, version = moved.ciphertext_blob, moved.key_id, moved.key_version
            notices.append(
                Notice(
                    "Normal",
                    RE_ENCRYPTED,
                    f"ciphertext in Secret {spec.secret_name} re-encrypted from key "
                    f"{opened.key_id} version {opened.key_version} to key {key_id} version "
                    f"{version}; the data key is unchanged",
                )
            )
            log.info(
                "DataKey %s/%s: re-encrypted from version %d to %d",
                namespace,
                view.name,
                opened.key_version,
                version,
            )

    desired = desired_secret(
        view, ciphertext=blob, plaintext=plaintext, key_id=key_id, key_version=version
    )
    if secret is None:
        secrets.create(namespace, desired)
    else:
        update = secret_update(secret, desired)
        if update is not None:
            secrets.replace(namespace, update)
            if not notices:
                notices.append(
                    Notice(
                        "Normal", SECRET_UPDATED, f"Secret {spec.secret_name} brought up to date"
                    )
                )
    ready = Condition(
        conditions.READY,
        True,
        SECRET_READY,
        f"Secret {spec.secret_name} holds the data key, encrypted under key {key_id} "
        f"version {version}",
    )
    return Outcome(ready, key_id=key_id, key_version=version, notices=notices)


def key_of_blob_in(service: KeyService, blob: bytes, namespace: str) -> KeyRecord | None:
    """The key a blob names, if it is a live key of ``namespace``; None for any other blob.

    A blob of another namespace's key (or of a detached key, or no blob at all) is never
    decrypted, shown in status nor given Events: to the DataKey it is ``InvalidCiphertext``.
    """
    try:
        owner = service.key_of_blob(blob)
    except InvalidCiphertext:
        return None
    if owner.namespace != namespace or owner.is_detached:
        log.debug("blob of key %s outside namespace %s: invalid here", owner.key_id, namespace)
        return None
    return owner


def _decrypt(
    service: KeyService, owner: KeyRecord | None, blob: bytes, context: Mapping[str, str]
) -> DecryptResult:
    if owner is None:
        raise InvalidCiphertext()
    return service.decrypt(blob, context)


def _key_for(runtime: Runtime, namespaces: NamespaceUids, view: DataKeyView) -> KeyRecord | Outcome:
    """The key to use, or why there is none yet (creating the default key's object if needed)."""
    service, namespace, spec = runtime.service, view.namespace, view.spec
    try:
        namespace_uid = namespaces.uid(namespace)
    except Exception as exc:
        log.warning(
            "DataKey %s/%s: reading its namespace failed (%s, status %s)",
            namespace,
            view.name,
            type(exc).__name__,
            getattr(exc, "status", None),
        )
        message = (
            f"could not read namespace {namespace} ({type(exc).__name__}), which binds keys to "
            "it; retrying"
        )
        return Outcome(_not_ready(NAMESPACE_UNREADABLE, message), retry_after=ERROR_RETRY)
    if namespace_uid is not None:
        # Keys an earlier namespace of this name left behind are detached here, never used.
        service.observe_namespace(namespace, namespace_uid)
    try:
        return service.resolve(namespace, spec.reference)
    except NotFound:
        if not spec.uses_default_key:
            message = (
                f"no CustomerMasterKey {spec.reference!r} with a live key in namespace "
                f"{namespace}; the DataKey waits for it"
            )
            return Outcome(
                _not_ready(KEY_NOT_FOUND, message),
                notices=[Notice("Warning", KEY_NOT_FOUND, message, on_change=True)],
            )
    notices = []
    body = runtime.objects.get_cmk(namespace, DEFAULT_KEY_NAME)
    if body is None:
        try:
            runtime.objects.create_cmk(namespace, default_key_object(namespace))
        except Exception:
            # Another DataKey created it meanwhile (AlreadyExists); anything else re-raises.
            body = runtime.objects.get_cmk(namespace, DEFAULT_KEY_NAME)
            if body is None:
                raise
        else:
            notices.append(
                Notice(
                    "Normal",
                    DEFAULT_KEY_CREATED,
                    f"created CustomerMasterKey {DEFAULT_KEY_NAME} ({DEFAULT_KEY_ALIAS}), the "
                    "namespace's default key for DataKeys",
                )
            )
            log.info("created the default key object %s/%s", namespace, DEFAULT_KEY_NAME)
    if body is not None and not is_default_key_object(body):
        message = (
            f"CustomerMasterKey {DEFAULT_KEY_NAME} exists but is not a default key (label "
            f"{DEFAULT_LABEL}=true and alias {DEFAULT_KEY_ALIAS}): give the DataKey a keyRef "
            "or rename that key"
        )
        return Outcome(
            _not_ready(DEFAULT_KEY_UNAVAILABLE, message),
            notices=[Notice("Warning", DEFAULT_KEY_UNAVAILABLE, message, on_change=True)],
        )
    message = f"waiting for the default key {DEFAULT_KEY_NAME} ({DEFAULT_KEY_ALIAS})"
    return Outcome(
        _not_ready(WAITING_FOR_DEFAULT_KEY, message),
        notices=notices,
        retry_after=DEFAULT_KEY_WAIT,
    )


def _refused(view: DataKeyView, record: KeyRecord, exc: KmsError) -> Outcome:
    """A key that refuses: Ready False with the KMS code, and the dependency made visible."""
    user = f"DataKey {view.namespace}/{view.name} (Secret {view.spec.secret_name})"
    message = f"{exc.message}; {user} depends on it"
    return Outcome(
        _not_ready(exc.code, message),
        key_id=record.key_id,
        notices=[Notice("Warning", exc.code, message, on_change=True)],
        key_notices=[
            (
                record.namespace,
                record.name,
                Notice(
                    "Warning",
                    exc.code,
                    f"{user} still depends on this key ({record.state}): its data key cannot be "
                    "generated, decrypted nor re-encrypted",
                    on_change=True,
                ),
            )
        ],
    )


def _not_ready(reason: str, message: str) -> Condition:
    return Condition(conditions.READY, False, reason, message)


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or () if c.get("type") == kind), {})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _lookup(service: KeyService, view: DataKeyView) -> KeyRecord | None:
    try:
        return service.resolve(view.namespace, view.spec.reference)
    except NotFound:
        return None


# -- handlers -------------------------------------------------------------------------------


@kopf.on.startup(id="dk-secrets-client", registry=registry)
async def connect(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    memo.dk_secrets = await asyncio.to_thread(Secrets.connect, runtime.settings.kubeconfig)
    memo.dk_namespaces = NamespaceUids(runtime.objects.namespace_info)


@kopf.on.cleanup(id="dk-secrets-client-close", registry=registry)
async def disconnect(memo: kopf.Memo, **_: Any) -> None:
    secrets: Secrets | None = memo.get("dk_secrets")
    if secrets is not None:
        secrets.close()


@kopf.on.resume(GROUP, VERSION, DK_PLURAL, id="dk-resume", registry=registry)
@kopf.on.create(GROUP, VERSION, DK_PLURAL, id="dk-create", registry=registry)
@kopf.on.update(GROUP, VERSION, DK_PLURAL, id="dk-update", registry=registry)
async def reconcile_handler(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    if body.meta.get("deletionTimestamp"):
        return  # the Secret goes with the DataKey (ownerReference)
    outcome = await _reconcile(body, patch, memo)
    if outcome.retry_after is not None:
        raise kopf.TemporaryError(outcome.ready.message, delay=outcome.retry_after)


@kopf.timer(
    GROUP,
    VERSION,
    DK_PLURAL,
    id="dk-check",
    registry=registry,
    interval=CHECK_INTERVAL,
    initial_delay=CHECK_INTERVAL,
)
async def check(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Rotation, key state changes, a missing key appearing: see the module's docstring."""
    if body.meta.get("deletionTimestamp"):
        return
    view = DataKeyView.of(body)
    resync_due = time.monotonic() - memo.get("dk_last_full", 0.0) >= RESYNC_INTERVAL
    if resync_due or needs_reconcile(view.status, _lookup(memo.runtime.service, view)):
        await _reconcile(body, patch, memo)


async def _reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> Outcome:
    runtime: Runtime = memo.runtime
    lock: asyncio.Lock = memo.setdefault("dk_lock", asyncio.Lock())  # this object's memo
    async with lock:
        view = DataKeyView.of(body)
        outcome = await asyncio.to_thread(
            reconcile, runtime, memo.dk_secrets, memo.dk_namespaces, view
        )
        memo["dk_last_full"] = time.monotonic()
    patch.status.update(
        datakey_status(
            outcome,
            secret_name=view.spec.secret_name,
            existing_conditions=view.status.get("conditions"),
            generation=view.generation,
            now=runtime.service.clock.now(),
        )
    )
    for notice in notices_to_post(outcome, view.ready):
        kopf.event(body, type=notice.type, reason=notice.reason, message=notice.message)
    if view.ready.get("reason") != outcome.ready.reason:
        for namespace, name, notice in outcome.key_notices:
            await asyncio.to_thread(_post_on_key, runtime, namespace, name, notice)
    return outcome


def _post_on_key(runtime: Runtime, namespace: str, name: str, notice: Notice) -> None:
    try:
        key = runtime.objects.get_cmk(namespace, name)
        uid = key["metadata"].get("uid") if key else None
        runtime.objects.post_event(
            namespace, name, uid, type_=notice.type, reason=notice.reason, message=notice.message
        )
    except Exception:
        log.exception("could not post %s on key %s/%s", notice.reason, namespace, name)

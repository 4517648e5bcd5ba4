"""One DataKey reconciliation, synchronous (it runs in a thread): the calls to the key service.

The steps, in order: find the key (:func:`_key_for`, creating the default key's object when
needed), read the owned Secret, keep its data key (decrypt, and re-encrypt when the key's
current version moved on) or generate one, write the Secret. Every decision on the way is a
pure function of :mod:`.decisions` or :mod:`.desired`; each key service operation goes through
:func:`.audit.audited` first.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kms_operator.errors import InvalidCiphertext, KeyStateError, KmsError, NotFound
from kms_operator.keys.service import DecryptResult, KeyService
from kms_operator.kube.secrets import SecretRaced, Secrets, SecretWriteFailed
from kms_operator.store.records import KeyRecord

from ..outcomes import Notice, Outcome
from ..runtime import Runtime
from . import decisions
from .audit import AuditNotWritten, audited
from .desired import (
    ciphertext_of,
    default_key_object,
    desired_secret,
    encryption_context,
    is_default_key_object,
    owned_by,
    secret_update,
)
from .namespaces import NamespaceUids
from .views import DEFAULT_KEY_NAME, DataKeyView

log = logging.getLogger(__name__)

#: Tries of one reconciliation when someone else writes the Secret in between.
ATTEMPTS = 3


@dataclass(frozen=True)
class _Sealed:
    """The data key as the Secret will hold it."""

    ciphertext: bytes
    plaintext: bytes | None = field(repr=False)
    key_id: uuid.UUID
    key_version: int


class _KeyRefused(Exception):
    """A key of the DataKey's namespace refused an operation by its state."""

    def __init__(self, record: KeyRecord, error: KeyStateError) -> None:
        super().__init__(error.code)
        self.record, self.error = record, error


def reconcile(
    runtime: Runtime, secrets: Secrets, namespaces: NamespaceUids, view: DataKeyView
) -> decisions.Reconciliation:
    """Make the owned Secret hold the data key; retried when someone writes it meanwhile."""
    for _ in range(ATTEMPTS):
        try:
            return decisions.Reconciliation(_reconcile_once(runtime, secrets, namespaces, view))
        except _KeyRefused as refusal:
            return decisions.refused(view, refusal.record, refusal.error)
        except SecretRaced as exc:
            log.debug("DataKey %s/%s: %s; trying again", view.namespace, view.name, exc)
        except AuditNotWritten as exc:
            return decisions.Reconciliation(decisions.audit_failed(str(exc)))
        except SecretWriteFailed as exc:
            return decisions.Reconciliation(decisions.secret_write_failed(str(exc)))
        except KmsError as exc:
            return decisions.Reconciliation(decisions.domain_error(exc))
    return decisions.Reconciliation(decisions.kept_changing(view))


def _reconcile_once(
    runtime: Runtime, secrets: Secrets, namespaces: NamespaceUids, view: DataKeyView
) -> Outcome:
    found = _key_for(runtime, namespaces, view)
    if isinstance(found, Outcome):
        return found
    record = found
    secret = secrets.get(view.namespace, view.spec.secret_name)
    if secret is not None and not owned_by(secret, view.uid):
        return decisions.secret_conflict(view)
    notices: list[Notice] = []
    blob = ciphertext_of(secret)
    previous = view.status.get("secretName")
    if blob is None and previous and previous != view.spec.secret_name:
        # spec.secretName was set after the fact: keep the data key of the earlier Secret.
        blob = _blob_of_earlier_secret(secrets, view, previous)
        if blob:
            notices.append(decisions.secret_moved(previous, view))
    if blob is None:
        sealed = _generate(runtime, view, record)
        notices.append(decisions.generated(view, sealed.key_id, sealed.key_version))
    else:
        owner = key_of_blob_in(runtime.service, blob, view.namespace)
        opened = _decrypt(runtime, view, owner, blob)
        if opened is None:
            return decisions.invalid_ciphertext(view, record.key_id)
        sealed = opened
        if (sealed.key_id, sealed.key_version) != (record.key_id, record.current_version):
            assert owner is not None  # it decrypted: the blob names a key of this namespace
            sealed = _re_encrypt(runtime, view, record, owner, opened)
            notices.append(
                decisions.re_encrypted(
                    view,
                    (opened.key_id, opened.key_version),
                    (sealed.key_id, sealed.key_version),
                )
            )
    if _write(secrets, view, secret, sealed) and not notices:
        notices.append(decisions.secret_updated(view))
    return decisions.secret_ready(view, sealed.key_id, sealed.key_version, notices)


# -- the key --------------------------------------------------------------------------------


def _key_for(runtime: Runtime, namespaces: NamespaceUids, view: DataKeyView) -> KeyRecord | Outcome:
    """The key to use, or why there is none yet (creating the default key's object if needed)."""
    unbound = _observe_namespace(runtime.service, namespaces, view)
    if unbound is not None:
        return unbound
    try:
        return runtime.service.resolve(view.namespace, view.spec.reference)
    except NotFound:
        if not view.spec.uses_default_key:
            return decisions.key_not_found(view)
    return _default_key(runtime, view.namespace)


def _observe_namespace(
    service: KeyService, namespaces: NamespaceUids, view: DataKeyView
) -> Outcome | None:
    """Tell the key service the namespace's UID; an Outcome when it cannot be read."""
    try:
        namespace_uid = namespaces.uid(view.namespace)
    except Exception as exc:
        log.warning(
            "DataKey %s/%s: reading its namespace failed (%s, status %s)",
            view.namespace,
            view.name,
            type(exc).__name__,
            getattr(exc, "status", None),
        )
        return decisions.namespace_unreadable(view.namespace, type(exc).__name__)
    if namespace_uid is not None:
        # Keys an earlier namespace of this name left behind are detached here, never used.
        service.observe_namespace(view.namespace, namespace_uid)
    return None


def _default_key(runtime: Runtime, namespace: str) -> Outcome:
    """The default key is not there yet: create its object (once) and wait for its key."""
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
            notices.append(decisions.default_key_created())
            log.info("created the default key object %s/%s", namespace, DEFAULT_KEY_NAME)
    if body is not None and not is_default_key_object(body):
        return decisions.default_key_unavailable()
    return decisions.waiting_for_default_key(notices)


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


# -- the data key ---------------------------------------------------------------------------


def _context(view: DataKeyView) -> dict[str, str]:
    return encryption_context(view.namespace, view.name, view.spec.encryption_context)


@contextlib.contextmanager
def _refusals_of(key: KeyRecord | None) -> Iterator[None]:
    """A refusal by ``key``'s state, inside, becomes :class:`_KeyRefused` naming ``key``."""
    try:
        yield
    except KeyStateError as exc:
        assert key is not None  # only a key of this namespace refuses by its state
        raise _KeyRefused(key, exc) from None


def _generate(runtime: Runtime, view: DataKeyView, record: KeyRecord) -> _Sealed:
    spec = view.spec
    with _refusals_of(record):
        generated = audited(
            runtime.audit,
            view,
            "generate-data-key",
            record,
            lambda: runtime.service.generate_data_key(
                view.namespace,
                record.key_id,
                key_spec=spec.key_spec,
                number_of_bytes=spec.number_of_bytes,
                context=_context(view),
            ),
        )
    log.info(
        "DataKey %s/%s: generated a data key under key %s version %d",
        view.namespace,
        view.name,
        generated.key_id,
        generated.key_version,
    )
    return _Sealed(
        generated.ciphertext_blob, generated.plaintext, generated.key_id, generated.key_version
    )


def _decrypt(
    runtime: Runtime, view: DataKeyView, owner: KeyRecord | None, blob: bytes
) -> _Sealed | None:
    """The data key in ``blob``; None when it does not decrypt here (``InvalidCiphertext``)."""

    def call() -> DecryptResult:
        if owner is None:
            raise InvalidCiphertext()  # not a key of this namespace: audited, never decrypted
        return runtime.service.decrypt(blob, _context(view))

    try:
        with _refusals_of(owner):
            opened = audited(runtime.audit, view, "decrypt", owner, call)
    except InvalidCiphertext:
        return None
    return _Sealed(blob, opened.plaintext, opened.key_id, opened.key_version)


def _re_encrypt(
    runtime: Runtime, view: DataKeyView, record: KeyRecord, owner: KeyRecord, opened: _Sealed
) -> _Sealed:
    """The same data key under ``record``'s current version."""
    context = _context(view)
    with _refusals_of(record):
        moved = audited(
            runtime.audit,
            view,
            "re-encrypt",
            record,
            lambda: runtime.service.re_encrypt(
                opened.ciphertext,
                view.namespace,
                record.key_id,
                source_context=context,
                destination_context=context,
            ),
            source=owner,
        )
    log.info(
        "DataKey %s/%s: re-encrypted from version %d to %d",
        view.namespace,
        view.name,
        opened.key_version,
        moved.key_version,
    )
    return _Sealed(moved.ciphertext_blob, opened.plaintext, moved.key_id, moved.key_version)


# -- the Secret -----------------------------------------------------------------------------


def _blob_of_earlier_secret(secrets: Secrets, view: DataKeyView, previous: str) -> bytes | None:
    earlier = secrets.get(view.namespace, previous)
    if earlier is None or not owned_by(earlier, view.uid):
        return None
    return ciphertext_of(earlier)


def _write(
    secrets: Secrets, view: DataKeyView, secret: Mapping[str, Any] | None, sealed: _Sealed
) -> bool:
    """Create the Secret, or bring it up to date; True when an existing one was changed."""
    desired = desired_secret(
        view,
        ciphertext=sealed.ciphertext,
        plaintext=sealed.plaintext,
        key_id=sealed.key_id,
        key_version=sealed.key_version,
    )
    if secret is None:
        secrets.create(view.namespace, desired)
        return False
    update = secret_update(secret, desired)
    if update is None:
        return False
    secrets.replace(view.namespace, update)
    return True

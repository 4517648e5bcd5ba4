"""Which key a CustomerMasterKey holds: its claim, the binding, and why one is refused.

An object holds the key bound to its namespace and object UIDs; it may claim a key by id
(``status.keyId``, or the ``kms.cmk.dev/key-id`` annotation the operator puts on objects it
recreates). :meth:`~kms_operator.keys.service.KeyService.bind` decides; this module reads the
claim, creates the key of an object that holds none and claims none, and says why a binding
is refused (the reason constants below), never creating a key behind the user's back.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kms_operator.contract import KEY_ID_ANNOTATION
from kms_operator.errors import KeyBoundElsewhere, NotFound
from kms_operator.keys.service import DEFAULT_ALIAS_PREFIX, KeyService
from kms_operator.kube.objects import NamespaceInfo
from kms_operator.store.records import KeyRecord

from .. import conditions
from ..conditions import Condition
from ..outcomes import Notice, Outcome, not_ready
from .specs import CustomerMasterKeySpec

#: The object's claim names a key that is not in the store (a store restored from an older
#: backup): also the reason of ``InStore=False``.
KEY_MISSING_FROM_STORE = "KeyMissingFromStore"
#: The object's name holds the key of an earlier object that this one does not claim.
KEY_BOUND_ELSEWHERE = "KeyBoundElsewhere"
#: The object claims (kms.cmk.dev/key-id) a key it cannot take.
KEY_CLAIM_REFUSED = "KeyClaimRefused"


@dataclass
class Binding:
    """What binding an object found: its key, or why it has none (``problem``: reason and
    message), and the keys of earlier namespaces or objects detached on the way."""

    record: KeyRecord | None
    created: bool = False
    detached: list[KeyRecord] = field(default_factory=list)
    problem: tuple[str, str] | None = None


def claim_of(meta: Mapping[str, Any], status: Mapping[str, Any]) -> tuple[str, str] | None:
    """The key id the object claims and where it says so: its own ``status.keyId``, else the
    ``kms.cmk.dev/key-id`` annotation; None when it claims none."""
    if status.get("keyId"):
        return str(status["keyId"]), "status.keyId"
    claimed = (meta.get("annotations") or {}).get(KEY_ID_ANNOTATION)
    if claimed:
        return str(claimed), f"the annotation {KEY_ID_ANNOTATION}"
    return None


def parse_key_id(text: str) -> uuid.UUID | None:
    """A key id in its one canonical spelling (lower-case, hyphenated), or None."""
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        return None
    return parsed if str(parsed) == text else None


def invalid_claim(claim: tuple[str, str]) -> tuple[str, str]:
    text, source = claim
    return (
        conditions.INVALID_SPEC,
        f"{source}: {text[:64]!r} is not a key id (the canonical lower-case UUID text): no key "
        "was bound or created",
    )


def claim_refused(key_id: uuid.UUID, source: str, *, in_store: bool) -> tuple[str, str]:
    """Why a claim of ``key_id`` bound nothing (``in_store``: the store has that key)."""
    if not in_store:
        # The object says it has a key, the store does not: never paper over it with a new key.
        return (
            KEY_MISSING_FROM_STORE,
            f"{source} names key {key_id}, which is not in the store (a store restored from an "
            "older backup, or a different store): no key was created; restore the store",
        )
    # Which of the reasons it is stays unsaid: the key may be another tenant's.
    return (
        KEY_CLAIM_REFUSED,
        f"{source} names key {key_id}, which this object cannot take (it is not a live key of "
        "this name in this namespace): no key was bound or created; remove the annotation "
        "to get a new key",
    )


def refused_outcome(problem: tuple[str, str]) -> Outcome:
    """The object that holds no key: Ready (and InStore, for a missing key) False, a Warning."""
    reason, message = problem
    extra: tuple[Condition, ...] = ()
    if reason == KEY_MISSING_FROM_STORE:
        extra = (Condition(conditions.IN_STORE, False, reason, message),)
    return Outcome(
        ready=not_ready(reason, message),
        extra_conditions=extra,
        notices=(Notice("Warning", reason, message),),
    )


def bind(service: KeyService, body: Mapping[str, Any], info: NamespaceInfo) -> Binding:
    """The key this object holds, without creating one (see :meth:`KeyService.bind`)."""
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    detached = service.observe_namespace(namespace, info.uid)
    claim = claim_of(meta, body.get("status") or {})
    claimed_id = None
    if claim is not None:
        claimed_id = parse_key_id(claim[0])
        if claimed_id is None:
            return Binding(None, detached=detached, problem=invalid_claim(claim))
    before = service.find(namespace, name)
    try:
        record = service.bind(
            namespace, name, namespace_uid=info.uid, object_uid=uid, claimed_key_id=claimed_id
        )
    except KeyBoundElsewhere as exc:
        return Binding(None, detached=detached, problem=(KEY_BOUND_ELSEWHERE, exc.message))
    if record is None and before is not None:
        after = service.get(before.key_id)
        if after.is_detached:
            detached.append(after)
    if record is not None or claim is None or claimed_id is None:
        return Binding(record, detached=detached)
    try:
        service.get(claimed_id)
        in_store = True
    except NotFound:
        in_store = False
    return Binding(
        None, detached=detached, problem=claim_refused(claimed_id, claim[1], in_store=in_store)
    )


def bind_or_create(
    service: KeyService,
    body: Mapping[str, Any],
    info: NamespaceInfo,
    spec: CustomerMasterKeySpec,
    default_service: str | None,
) -> Binding:
    """:func:`bind`, and the key created when the object holds none and claims none.

    The key is created with what cannot be refused (origin, binding, description, a default
    key's reserved alias); :meth:`KeyService.apply_spec` then applies the rest, and reports
    what it refuses.
    """
    binding = bind(service, body, info)
    if binding.record is not None or binding.problem is not None:
        return binding
    meta = body["metadata"]
    reserved = tuple(a for a in spec.aliases if a.startswith(DEFAULT_ALIAS_PREFIX))
    binding.record = service.create_key(
        meta["namespace"],
        meta["name"],
        origin=spec.origin,
        description=spec.description,
        enabled=spec.enabled or default_service is not None,
        aliases=reserved if default_service else (),
        default_service=default_service,
        namespace_uid=info.uid,
        object_uid=meta["uid"],
    )
    binding.created = True
    return binding

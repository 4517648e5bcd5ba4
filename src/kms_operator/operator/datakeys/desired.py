"""The owned Secret and the default key's object as they must be, built by pure functions.

cert-manager style: the desired object is built from its inputs, then applied; an update is
the smallest change that makes the current object match, or nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

from kms_operator.contract import (
    API_VERSION,
    CMK_KIND,
    CONTEXT_ANNOTATION,
    DATAKEY_CONTEXT,
    DATAKEY_LABEL,
    DEFAULT_LABEL,
    DK_KIND,
    KEY_ID_ANNOTATION,
    KEY_VERSION_ANNOTATION,
    MANAGED_BY,
    NAMESPACE_CONTEXT,
    SECRET_CIPHERTEXT_KEY,
    SECRET_CIPHERTEXT_TEXT_KEY,
    SECRET_PLAINTEXT_KEY,
    SECRET_PLAINTEXT_TEXT_KEY,
    SECRET_TYPE,
)
from kms_operator.crypto import blob as blobs

from .views import DEFAULT_KEY_ALIAS, DEFAULT_KEY_NAME, DataKeyView


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
    """The Secret as it must be."""
    spec = view.spec
    context = encryption_context(view.namespace, view.name, spec.encryption_context)
    # Each value twice: raw bytes for files, base64 text for environment variables.
    data = {
        SECRET_CIPHERTEXT_KEY: _b64(ciphertext),
        SECRET_CIPHERTEXT_TEXT_KEY: _b64(_b64(ciphertext).encode("ascii")),
    }
    if spec.include_plaintext and plaintext is not None:
        data[SECRET_PLAINTEXT_KEY] = _b64(plaintext)
        data[SECRET_PLAINTEXT_TEXT_KEY] = _b64(_b64(plaintext).encode("ascii"))
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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")

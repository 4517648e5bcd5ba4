"""DataKey's pure pieces, without a cluster: spec parsing, context, desired Secret, update
decision, ownership, the timer's question, status and Event selection."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from kms_operator.operator import conditions
from kms_operator.operator.conditions import Condition
from kms_operator.operator.datakeys import decisions
from kms_operator.operator.datakeys.decisions import bound_fields, datakey_status, needs_reconcile
from kms_operator.operator.datakeys.desired import (
    ciphertext_of,
    default_key_object,
    desired_secret,
    encryption_context,
    is_default_key_object,
    label_value,
    owned_by,
    secret_update,
)
from kms_operator.operator.datakeys.views import DataKeySpec, DataKeyView
from kms_operator.operator.outcomes import Notice, Outcome
from kms_operator.store.records import KeyRecord, Origin, VersionRecord, VersionState

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
KEY_ID = uuid.UUID(int=42)
UID = "0b3c1a5e-0000-4000-8000-000000000001"
PLAINTEXT = bytes(range(32))
BLOB = b"KMS1" + bytes(60)


def _view(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> DataKeyView:
    return DataKeyView.of(
        {
            "metadata": {"namespace": "team", "name": "dek", "uid": UID, "generation": 3},
            "spec": spec or {},
            "status": status or {},
        }
    )


def _record(**changes: object) -> KeyRecord:
    base = KeyRecord(
        key_id=KEY_ID,
        namespace="team",
        name="k",
        origin=Origin.KMS,
        created_at=NOW,
        versions=(
            VersionRecord(1, NOW, VersionState.ENABLED),
            VersionRecord(2, NOW, VersionState.ENABLED),
        ),
    )
    return base.evolve(**changes)


def _ready(status: bool, reason: str) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": "True" if status else "False",
        "reason": reason,
        "message": "m",
        "lastTransitionTime": "2026-11-29T11:00:00Z",
    }


# -- spec -----------------------------------------------------------------------------------


def test_spec_defaults() -> None:
    spec = DataKeySpec.parse({}, "dek")
    assert spec.secret_name == "dek"
    assert spec.include_plaintext is True
    assert spec.uses_default_key
    assert spec.reference == "alias/kms/datakeys"
    assert spec.key_spec is None and spec.number_of_bytes is None


def test_spec_reference_by_name_or_alias() -> None:
    assert DataKeySpec.parse({"keyRef": {"name": "orders"}}, "d").reference == "orders"
    by_alias = DataKeySpec.parse({"keyRef": {"alias": "alias/pay"}}, "d")
    assert by_alias.reference == "alias/pay" and not by_alias.uses_default_key


def test_context_adds_the_strict_scope_and_it_wins() -> None:
    assert encryption_context("ns", "dk", {"app": "x", "kms.cmk.dev/namespace": "evil"}) == {
        "app": "x",
        "kms.cmk.dev/namespace": "ns",
        "kms.cmk.dev/datakey": "dk",
    }


# -- the desired Secret ---------------------------------------------------------------------


def test_desired_secret_is_typed_owned_labelled_and_annotated() -> None:
    view = _view(
        {
            "encryptionContext": {"app": "orders"},
            "secretTemplate": {
                "labels": {"team": "a", "kms.cmk.dev/datakey": "spoofed"},
                "annotations": {"owner": "me", "kms.cmk.dev/key-version": "99"},
            },
        }
    )
    secret = desired_secret(
        view, ciphertext=BLOB, plaintext=PLAINTEXT, key_id=KEY_ID, key_version=2
    )
    meta = secret["metadata"]
    assert secret["type"] == "kms.cmk.dev/data-key"
    assert meta["name"] == "dek" and meta["namespace"] == "team"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "kms.cmk.dev/v1alpha1",
            "kind": "DataKey",
            "name": "dek",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"] == {"team": "a", "kms.cmk.dev/datakey": "dek"}  # ours win
    assert meta["annotations"]["owner"] == "me"
    assert meta["annotations"]["kms.cmk.dev/key-id"] == str(KEY_ID)
    assert meta["annotations"]["kms.cmk.dev/key-version"] == "2"
    assert json.loads(meta["annotations"]["kms.cmk.dev/encryption-context"]) == {
        "app": "orders",
        "kms.cmk.dev/namespace": "team",
        "kms.cmk.dev/datakey": "dek",
    }
    assert base64.b64decode(secret["data"]["ciphertext"]) == BLOB
    assert base64.b64decode(secret["data"]["plaintext"]) == PLAINTEXT
    # The text forms, for environment variables: base64 of the same bytes, ASCII only.
    text = {k: base64.b64decode(v).decode("ascii") for k, v in secret["data"].items()}
    assert base64.b64decode(text["ciphertextBase64"], validate=True) == BLOB
    assert base64.b64decode(text["plaintextBase64"], validate=True) == PLAINTEXT


def test_desired_secret_without_plaintext_and_with_its_own_name() -> None:
    view = _view({"includePlaintext": False, "secretName": "elsewhere"})
    secret = desired_secret(
        view, ciphertext=BLOB, plaintext=PLAINTEXT, key_id=KEY_ID, key_version=1
    )
    assert set(secret["data"]) == {"ciphertext", "ciphertextBase64"}
    assert secret["metadata"]["name"] == "elsewhere"
    assert secret["metadata"]["labels"]["kms.cmk.dev/datakey"] == "dek"


def test_long_names_make_valid_label_values() -> None:
    assert label_value("short") == "short"
    long = "a" * 100 + ".b"
    value = label_value(long)
    assert len(value) <= 63 and value != label_value("a" * 101 + ".b")


def _current(desired: dict[str, Any]) -> dict[str, Any]:
    current = copy.deepcopy(desired)
    current["metadata"]["resourceVersion"] = "17"
    current["metadata"]["uid"] = "secret-uid"
    current["metadata"]["labels"]["added-by-someone"] = "x"
    return current


def test_update_skips_writes_that_change_nothing() -> None:
    desired = desired_secret(
        _view(), ciphertext=BLOB, plaintext=PLAINTEXT, key_id=KEY_ID, key_version=1
    )
    assert secret_update(_current(desired), desired) is None


def test_update_sets_data_keeps_others_labels_type_and_resource_version() -> None:
    old = desired_secret(
        _view(), ciphertext=BLOB, plaintext=PLAINTEXT, key_id=KEY_ID, key_version=1
    )
    current = _current(old)
    current["type"] = "Opaque"
    current["data"]["stray"] = "eA=="
    new = desired_secret(
        _view({"includePlaintext": False}),
        ciphertext=BLOB + b"x",
        plaintext=PLAINTEXT,
        key_id=KEY_ID,
        key_version=2,
    )
    body = secret_update(current, new)
    assert body is not None
    assert body["data"] == new["data"]  # exactly ours: no plaintext, no stray key
    assert body["type"] == "Opaque"  # immutable: never changed
    assert body["metadata"]["resourceVersion"] == "17"
    assert body["metadata"]["labels"]["added-by-someone"] == "x"
    assert body["metadata"]["annotations"]["kms.cmk.dev/key-version"] == "2"
    assert current["metadata"]["annotations"]["kms.cmk.dev/key-version"] == "1"  # not mutated


def test_update_restores_our_owner_reference() -> None:
    desired = desired_secret(
        _view(), ciphertext=BLOB, plaintext=PLAINTEXT, key_id=KEY_ID, key_version=1
    )
    current = _current(desired)
    current["metadata"]["ownerReferences"] = [{"uid": UID, "kind": "DataKey", "name": "dek"}]
    body = secret_update(current, desired)
    assert body is not None
    assert body["metadata"]["ownerReferences"] == desired["metadata"]["ownerReferences"]


def test_ownership_and_ciphertext_reading() -> None:
    desired = desired_secret(
        _view(), ciphertext=BLOB, plaintext=PLAINTEXT, key_id=KEY_ID, key_version=1
    )
    assert owned_by(desired, UID)
    assert not owned_by(desired, "someone-else")
    assert not owned_by({"metadata": {}}, UID)
    assert ciphertext_of(desired) == BLOB
    assert ciphertext_of(None) is None
    assert ciphertext_of({"data": {}}) is None
    assert ciphertext_of({"data": {"ciphertext": ""}}) is None
    assert ciphertext_of({"data": {"ciphertext": "not base64!"}}) == b""


def test_default_key_object() -> None:
    body = default_key_object("team")
    assert body["kind"] == "CustomerMasterKey"
    assert body["metadata"]["name"] == "kms-default-datakeys"
    assert body["metadata"]["labels"]["kms.cmk.dev/default"] == "true"
    assert body["spec"]["aliases"] == ["alias/kms/datakeys"]
    assert is_default_key_object(body)
    assert not is_default_key_object({"metadata": {"name": "kms-default-datakeys"}, "spec": {}})


# -- the timer's question -------------------------------------------------------------------


def test_needs_reconcile_when_never_reconciled() -> None:
    assert needs_reconcile({}, _record())
    assert needs_reconcile({}, None)


def test_needs_reconcile_after_a_rotation_only() -> None:
    up_to_date = {
        "keyId": str(KEY_ID),
        "keyVersion": 2,
        "conditions": [_ready(True, decisions.SECRET_READY)],
    }
    assert not needs_reconcile(up_to_date, _record())
    assert needs_reconcile({**up_to_date, "keyVersion": 1}, _record())
    assert needs_reconcile({**up_to_date, "keyId": str(uuid.UUID(int=1))}, _record())


def test_needs_reconcile_when_the_key_state_changes() -> None:
    disabled = _record(enabled=False)
    refused = {"keyId": str(KEY_ID), "conditions": [_ready(False, "KeyDisabled")]}
    assert not needs_reconcile(refused, disabled)  # already said: no repeated refusal
    ready = {"keyId": str(KEY_ID), "keyVersion": 2, "conditions": [_ready(True, "SecretReady")]}
    assert needs_reconcile(ready, disabled)  # newly disabled: say so
    assert needs_reconcile(refused, _record())  # enabled again
    pending = _record(deletion_date=NOW)
    assert needs_reconcile(refused, pending)


def test_needs_reconcile_waits_for_a_missing_key_to_appear() -> None:
    missing = {"conditions": [_ready(False, decisions.KEY_NOT_FOUND)]}
    assert not needs_reconcile(missing, None)
    assert needs_reconcile(missing, _record())
    assert needs_reconcile({"conditions": [_ready(True, "SecretReady")]}, None)


# -- status and Events ----------------------------------------------------------------------


def test_status_of_a_ready_data_key() -> None:
    outcome = Outcome(
        Condition(conditions.READY, True, decisions.SECRET_READY, "ok"),
        fields=bound_fields(KEY_ID, 2),
    )
    status = datakey_status(
        outcome, secret_name="dek", existing_conditions=None, generation=3, now=NOW
    )
    assert status["keyId"] == str(KEY_ID) and status["keyVersion"] == 2
    assert status["secretName"] == "dek" and status["observedGeneration"] == 3
    (ready,) = status["conditions"]
    assert ready["status"] == "True" and ready["reason"] == "SecretReady"
    assert ready["observedGeneration"] == 3


def test_status_of_a_refusal_leaves_the_version_alone() -> None:
    outcome = Outcome(
        Condition(conditions.READY, False, "KeyDisabled", "off"), fields=bound_fields(KEY_ID)
    )
    status = datakey_status(
        outcome, secret_name="dek", existing_conditions=None, generation=None, now=NOW
    )
    assert "keyVersion" not in status and "observedGeneration" not in status
    assert status["conditions"][0]["reason"] == "KeyDisabled"


def test_repeated_warnings_are_posted_once_per_change() -> None:
    warning = Notice("Warning", "KeyDisabled", "off", on_change=True)
    action = Notice("Normal", "ReEncrypted", "moved")
    outcome = Outcome(
        Condition(conditions.READY, False, "KeyDisabled", "off"), notices=(warning, action)
    )
    assert outcome.notices_to_post(_ready(True, "SecretReady")) == [warning, action]
    assert outcome.notices_to_post(_ready(False, "KeyDisabled")) == [action]
    assert outcome.notices_to_post({}) == [warning, action]


def test_no_plaintext_in_status_conditions_or_notices() -> None:
    view = _view()
    secret = desired_secret(
        view, ciphertext=BLOB, plaintext=PLAINTEXT, key_id=KEY_ID, key_version=1
    )
    outcome = Outcome(
        Condition(conditions.READY, True, decisions.SECRET_READY, "ok"),
        fields=bound_fields(KEY_ID, 1),
    )
    text = json.dumps(
        datakey_status(outcome, secret_name="dek", existing_conditions=None, generation=1, now=NOW)
    ) + repr(outcome)
    assert secret["data"]["plaintext"] not in text and PLAINTEXT.hex() not in text

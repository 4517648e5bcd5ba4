"""KeyMaterialImport's pure pieces: spec and status parsing, phase decisions, expiry, status."""

from __future__ import annotations

import base64
import json
import logging
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kms_operator.crypto.wrapping import WrappingAlgorithm, WrappingKeySpec
from kms_operator.errors import (
    ExpiredImportToken,
    IncorrectKeyMaterial,
    InvalidImportToken,
    InvalidRequest,
    KmsError,
    StoreError,
)
from kms_operator.operator.conditions import Condition
from kms_operator.operator.keymaterialimports import decisions as kmi
from kms_operator.operator.keymaterialimports.decisions import (
    Step,
    expiry_due,
    failure_of,
    import_outcome,
    key_problem,
    next_expiry,
    next_step,
    parameters_fields,
    settled,
    waiting_message,
)
from kms_operator.operator.keymaterialimports.deletion import holds_version, not_own_key
from kms_operator.operator.keymaterialimports.redaction import RedactInlineMaterial
from kms_operator.operator.keymaterialimports.views import (
    ImportStatus,
    KeyMaterialImportSpec,
    Phase,
)
from kms_operator.operator.outcomes import status_patch
from kms_operator.store.records import (
    ImportParameters,
    KeyRecord,
    Origin,
    VersionRecord,
    VersionState,
)
from kms_operator.timestamps import parse_rfc3339, rfc3339

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
KEY_ID = uuid.UUID(int=42)
LATER = NOW + timedelta(days=1)


def _spec(**changes: Any) -> KeyMaterialImportSpec:
    body: dict[str, Any] = {"keyRef": {"name": "byok"}}
    body.update(changes)
    return KeyMaterialImportSpec.parse(body)


def _status(
    *,
    phase: Phase = Phase.WAITING,
    reason: str | None = kmi.WAITING_FOR_MATERIAL,
    ready: bool = False,
    refused: bool = False,
    generation: int | None = 1,
    expire_at: datetime | None = LATER,
    token: str | None = "kmsit1_abc",  # noqa: S107 - a test token
    key_version: int | None = None,
) -> ImportStatus:
    """A status as the operator writes it; ``refused``: with ``Synced=False`` (the spec as
    written was refused at ``generation``)."""
    raw: dict[str, Any] = {
        "phase": phase.value,
        "keyId": str(KEY_ID),
        "observedGeneration": generation,
    }
    if token:
        raw["importToken"] = token
    if expire_at:
        raw["parametersExpireAt"] = rfc3339(expire_at)
    if key_version is not None:
        raw["keyVersion"] = key_version
    if reason:
        raw["conditions"] = [
            {"type": "Ready", "status": "True" if ready else "False", "reason": reason}
        ]
        if refused:
            raw["conditions"].append(
                {
                    "type": "Synced",
                    "status": "False",
                    "reason": reason,
                    "observedGeneration": generation,
                }
            )
    return ImportStatus.parse(raw)


def _record(**changes: Any) -> KeyRecord:
    base = KeyRecord(
        key_id=KEY_ID,
        namespace="ns",
        name="byok",
        origin=Origin.EXTERNAL,
        created_at=NOW,
        versions=(VersionRecord(1, NOW, VersionState.PENDING_IMPORT),),
    )
    return base.evolve(**changes)


# -- parsing -------------------------------------------------------------------------------


def test_spec_defaults_follow_the_crd() -> None:
    spec = _spec()
    assert spec.key_name == "byok"
    assert spec.algorithm is WrappingAlgorithm.RSAES_OAEP_SHA_256
    assert spec.key_spec is WrappingKeySpec.RSA_4096
    assert spec.import_token is None and spec.secret_name is None and spec.valid_to is None
    assert spec.secret_key == "encryptedKeyMaterial"


def test_spec_with_the_material_handed_over() -> None:
    spec = _spec(
        wrappingAlgorithm="RSA_AES_KEY_WRAP_SHA_256",
        wrappingKeySpec="RSA_2048",
        importToken="t",
        encryptedKeyMaterialSecretRef={"name": "wrapped", "key": "blob"},
        validTo="2027-01-01T00:00:00Z",
    )
    assert spec.algorithm is WrappingAlgorithm.RSA_AES_KEY_WRAP_SHA_256
    assert spec.key_spec is WrappingKeySpec.RSA_2048
    assert (spec.import_token, spec.secret_name, spec.secret_key) == ("t", "wrapped", "blob")


def test_spec_with_the_material_inline() -> None:
    spec = _spec(encryptedKeyMaterial="d3JhcHBlZA==", importToken="t")
    assert spec.inline_material == "d3JhcHBlZA==" and spec.secret_name is None
    assert spec.handed_over and not _spec().handed_over
    assert _spec(encryptedKeyMaterialSecretRef={"name": "s"}).handed_over
    assert "d3JhcHBlZA" not in repr(spec)  # wrapped material stays out of reprs too


def test_inline_material_is_imported_like_a_secret() -> None:
    spec = _spec(encryptedKeyMaterial="d3JhcHBlZA==")
    assert next_step(spec, _status(), key_id=KEY_ID, generation=2, now=NOW) is Step.IMPORT
    assert next_step(spec, _status(), key_id=KEY_ID, generation=2, now=LATER) is Step.EXPIRE


def test_the_waiting_message_offers_both_ways_to_hand_material_over() -> None:
    message = waiting_message("ns", _spec(), LATER)
    assert "spec.encryptedKeyMaterial " in message
    assert "spec.encryptedKeyMaterialSecretRef.name" in message
    assert "spec.importToken" in message


def test_times_are_exact_and_round_trip() -> None:
    moment = NOW + timedelta(microseconds=123456)
    assert rfc3339(moment) == "2026-11-29T12:00:00.123456Z"
    assert parse_rfc3339(rfc3339(moment)) == moment
    assert parse_rfc3339("2026-11-29T13:00:00+01:00") == NOW
    assert parse_rfc3339(None) is None
    for bad in ("tomorrow", "2026-11-29T12:00:00"):
        with pytest.raises(ValueError):
            parse_rfc3339(bad)


def test_status_parse_reads_ready_and_dates() -> None:
    status = _status(phase=Phase.IMPORTED, reason="Imported", ready=True, key_version=3)
    assert status.ready_status and status.ready_reason == "Imported"
    assert status.key_version == 3 and status.parameters_expire_at == LATER
    assert status.has_parameters_for(KEY_ID)
    assert not status.has_parameters_for(uuid.UUID(int=1))  # parameters of another key
    assert ImportStatus.parse({}).ready_reason is None


# -- decisions -----------------------------------------------------------------------------


def test_new_object_gets_parameters() -> None:
    status = ImportStatus.parse({})
    assert next_step(_spec(), status, key_id=KEY_ID, generation=1, now=NOW) is Step.ISSUE


def test_parameters_of_a_recreated_key_are_issued_again() -> None:
    status = _status()
    other = uuid.UUID(int=7)
    assert next_step(_spec(), status, key_id=other, generation=1, now=NOW) is Step.ISSUE


def test_waiting_until_the_material_is_handed_over() -> None:
    assert next_step(_spec(), _status(), key_id=KEY_ID, generation=1, now=NOW) is Step.WAIT


def test_handed_over_material_is_imported_with_the_status_token_by_default() -> None:
    spec = _spec(encryptedKeyMaterialSecretRef={"name": "s"})
    assert next_step(spec, _status(), key_id=KEY_ID, generation=2, now=NOW) is Step.IMPORT


def test_parameters_expire_at_their_date_not_before() -> None:
    just_before = LATER - timedelta(microseconds=1)
    assert next_step(_spec(), _status(), key_id=KEY_ID, generation=1, now=just_before) is (
        Step.WAIT
    )
    assert next_step(_spec(), _status(), key_id=KEY_ID, generation=1, now=LATER) is Step.EXPIRE
    handed = _spec(encryptedKeyMaterialSecretRef={"name": "s"})
    assert next_step(handed, _status(), key_id=KEY_ID, generation=2, now=LATER) is Step.EXPIRE


def test_a_token_from_elsewhere_is_judged_by_the_store() -> None:
    spec = _spec(encryptedKeyMaterialSecretRef={"name": "s"}, importToken="other")
    assert next_step(spec, _status(), key_id=KEY_ID, generation=2, now=LATER) is Step.IMPORT


def test_final_failures_settle_until_the_spec_changes() -> None:
    for failed in (
        _status(phase=Phase.FAILED, reason=kmi.INCORRECT_KEY_MATERIAL, refused=True, generation=2),
        _status(phase=Phase.FAILED, reason=kmi.KEY_NOT_EXTERNAL, refused=True, generation=2),
        _status(phase=Phase.EXPIRED, reason=kmi.PARAMETERS_EXPIRED, generation=2),
    ):
        assert settled(failed, 2)
        assert not settled(failed, 3)
        spec = _spec(encryptedKeyMaterialSecretRef={"name": "s"})
        assert next_step(spec, failed, key_id=KEY_ID, generation=2, now=NOW) is Step.NOTHING
        assert next_step(spec, failed, key_id=KEY_ID, generation=3, now=NOW) is Step.IMPORT


def test_transient_failures_never_settle() -> None:
    for phase, reason in (
        (Phase.FAILED, kmi.KEY_NOT_FOUND),
        (Phase.FAILED, kmi.KEY_PENDING_DELETION),
        (Phase.WAITING, kmi.MATERIAL_SECRET_NOT_FOUND),
    ):
        assert not settled(_status(phase=phase, reason=reason, generation=2), 2)


def test_an_imported_object_does_nothing_on_resume_and_reports_later_spec_changes() -> None:
    done = _status(phase=Phase.IMPORTED, reason="Imported", ready=True, key_version=1, generation=2)
    spec = _spec(encryptedKeyMaterialSecretRef={"name": "s"})
    assert settled(done, 2)
    assert next_step(spec, done, key_id=KEY_ID, generation=2, now=LATER) is Step.NOTHING
    assert next_step(spec, done, key_id=KEY_ID, generation=3, now=NOW) is Step.ALREADY_IMPORTED


def test_key_problems() -> None:
    missing = key_problem(None, "ns", "byok")
    assert missing is not None and missing.retry and missing.reason == kmi.KEY_NOT_FOUND
    kms = key_problem(_record(origin=Origin.KMS), "ns", "byok")
    assert kms is not None and not kms.retry and "EXTERNAL" in kms.message
    default = key_problem(_record(default_service="datakeys"), "ns", "byok")
    assert default is not None and default.reason == "DefaultKeyProtected" and not default.retry
    pending = key_problem(_record(deletion_date=LATER), "ns", "byok")
    assert pending is not None and pending.retry and pending.reason == kmi.KEY_PENDING_DELETION
    assert key_problem(_record(), "ns", "byok") is None


def test_failures_map_to_phases_and_reasons() -> None:
    def phase_and_reason(exc: KmsError) -> tuple[str, str]:
        failure = failure_of(exc, None)
        return failure.phase, failure.reason

    assert phase_and_reason(ExpiredImportToken("expired")) == ("Expired", "ExpiredImportToken")
    assert phase_and_reason(IncorrectKeyMaterial("no")) == ("Failed", "IncorrectKeyMaterial")
    assert phase_and_reason(InvalidImportToken("no")) == ("Failed", "InvalidImportToken")
    failure = failure_of(
        InvalidRequest("validTo must be in the future", field="validTo"), "2020-01-01T00:00:00Z"
    )
    assert (failure.phase, failure.reason) == ("Failed", "InvalidRequest")
    assert "spec.validTo 2020-01-01T00:00:00Z" in failure.message
    assert failure_of(StoreError("disk"), None).phase == "Failed"


# -- expiry --------------------------------------------------------------------------------


def test_parameters_expiry_is_due_at_the_status_date() -> None:
    waiting = _status()
    assert expiry_due(waiting, material_present=True, valid_to=None, now=NOW) is None
    due = expiry_due(waiting, material_present=True, valid_to=None, now=LATER)
    assert due is not None and due[0] == kmi.PARAMETERS_EXPIRED
    assert "new KeyMaterialImport" in due[1]
    assert next_expiry(waiting, None) == LATER
    missing_secret = _status(reason=kmi.MATERIAL_SECRET_NOT_FOUND)
    assert expiry_due(missing_secret, material_present=True, valid_to=None, now=LATER)
    failed = _status(phase=Phase.FAILED, reason=kmi.INCORRECT_KEY_MATERIAL, refused=True)
    assert expiry_due(failed, material_present=True, valid_to=None, now=LATER) is None
    assert next_expiry(failed, None) is None


def test_material_expiry_follows_the_store_date() -> None:
    imported = _status(phase=Phase.IMPORTED, reason="Imported", ready=True, key_version=2)
    valid_to = NOW + timedelta(days=3)
    assert expiry_due(imported, material_present=True, valid_to=valid_to, now=NOW) is None
    assert next_expiry(imported, valid_to) == valid_to
    due = expiry_due(imported, material_present=True, valid_to=valid_to, now=valid_to)
    assert due is not None and due[0] == kmi.MATERIAL_EXPIRED and "version 2" in due[1]
    # The store's timer may drop the material first: still Expired.
    dropped = expiry_due(imported, material_present=False, valid_to=valid_to, now=valid_to)
    assert dropped is not None and dropped[0] == kmi.MATERIAL_EXPIRED
    gone = expiry_due(imported, material_present=False, valid_to=None, now=NOW)
    assert gone is not None and gone[0] == kmi.MATERIAL_DELETED
    assert expiry_due(imported, material_present=True, valid_to=None, now=LATER) is None
    expired = _status(phase=Phase.EXPIRED, reason=kmi.MATERIAL_EXPIRED, key_version=2)
    assert expiry_due(expired, material_present=False, valid_to=valid_to, now=LATER) is None
    assert next_expiry(expired, valid_to) is None


# -- status --------------------------------------------------------------------------------


def test_parameters_fields_and_waiting_status() -> None:
    params = ImportParameters(
        token="kmsit1_tok",
        key_id=KEY_ID,
        wrapping_algorithm="RSAES_OAEP_SHA_256",
        wrapping_key_spec="RSA_2048",
        public_key_pem="-----BEGIN PUBLIC KEY-----\n...",
        expires_at=LATER,
    )
    spec = _spec(wrappingKeySpec="RSA_2048")
    message = waiting_message("ns", spec, LATER)
    status = status_patch(
        import_outcome(
            Phase.WAITING,
            Condition("Ready", False, kmi.WAITING_FOR_MATERIAL, message),
            fields=parameters_fields(params),
        ),
        existing_conditions=None,
        generation=4,
        now=NOW,
    )
    assert status["phase"] == "WaitingForMaterial"
    assert status["importToken"] == "kmsit1_tok"
    assert status["wrappingPublicKey"].startswith("-----BEGIN PUBLIC KEY-----")
    assert status["parametersExpireAt"] == rfc3339(LATER)
    assert status["keyId"] == str(KEY_ID) and status["observedGeneration"] == 4
    (ready,) = status["conditions"]
    assert ready["reason"] == "WaitingForMaterial" and ready["status"] == "False"
    expected = [
        *("32 bytes", "RSAES_OAEP_SHA_256", "RSA_2048", "Secret", "namespace ns"),
        *("spec.encryptedKeyMaterialSecretRef", "spec.importToken", rfc3339(LATER)),
    ]
    for words in expected:
        assert words in message
    assert "kmsit1_tok" not in message  # tokens stay in their field


def test_status_from_the_daemon_keeps_the_observed_generation() -> None:
    status = status_patch(
        import_outcome(Phase.EXPIRED, Condition("Ready", False, kmi.PARAMETERS_EXPIRED, "expired")),
        existing_conditions=[
            {
                "type": "Ready",
                "status": "False",
                "reason": "WaitingForMaterial",
                "message": "m",
                "lastTransitionTime": "2026-11-29T11:00:00Z",
            },
        ],
        generation=None,
        now=NOW,
    )
    assert "observedGeneration" not in status
    assert status["conditions"][0]["lastTransitionTime"] == "2026-11-29T11:00:00Z"


def test_holders_of_a_version() -> None:
    def body(uid: str, version: int, ready: bool = True, **meta: Any) -> dict[str, Any]:
        return {
            "metadata": {"uid": uid, **meta},
            "status": {
                "keyId": str(KEY_ID),
                "keyVersion": version,
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        }

    assert holds_version(body("b", 1), str(KEY_ID), 1, uid="a")
    assert not holds_version(body("a", 1), str(KEY_ID), 1, uid="a")  # itself
    assert not holds_version(body("b", 2), str(KEY_ID), 1, uid="a")
    assert not holds_version(body("b", 1, ready=False), str(KEY_ID), 1, uid="a")
    assert not holds_version(
        body("b", 1, deletionTimestamp="2026-11-29T12:00:00Z"), str(KEY_ID), 1, uid="a"
    )


# -- deletion: the key named by status must be the import's own -----------------------------


def test_own_key_is_the_bound_key_of_the_key_ref() -> None:
    own = _record()
    assert not_own_key(own, own, namespace="ns", key_name="byok") is None


@pytest.mark.parametrize(
    ("record", "bound", "words"),
    [
        (_record(namespace="elsewhere"), None, "not the key of spec.keyRef ns/byok"),
        (_record(name="victim"), _record(name="victim"), "not the key of spec.keyRef ns/byok"),
        (_record(detached_at=NOW), None, "not the key bound to ns/byok now"),
        (_record(), _record(key_id=uuid.UUID(int=7)), "not the key bound to ns/byok now"),
        (_record(), None, "not the key bound to ns/byok now"),
    ],
    ids=["other-namespace", "other-name", "detached", "replaced", "unbound"],
)
def test_a_key_that_is_not_the_imports_own_is_named(
    record: KeyRecord, bound: KeyRecord | None, words: str
) -> None:
    why = not_own_key(record, bound, namespace="ns", key_name="byok")
    assert why is not None and words in why and str(record.key_id) in why


# -- Kopf's DEBUG lines never show inline material -------------------------------------------


def test_inline_material_is_redacted_from_kopf_lines() -> None:
    wrapped = base64.b64encode(os.urandom(256)).decode()
    body = {
        "metadata": {
            "annotations": {
                "kopf.kms.cmk.dev/last-handled-configuration": json.dumps(
                    {"spec": {"encryptedKeyMaterial": wrapped}}
                )
            }
        },
        "spec": {"encryptedKeyMaterial": wrapped, "importToken": "kmsit1_token"},
    }
    lines = [
        f"Creation is in progress: {body!r}",
        f"Update diff: {(('add', ('spec', 'encryptedKeyMaterial'), None, wrapped),)!r}",
        f"Patching with: {body['metadata']!r}",
    ]
    for line in lines:
        record = logging.LogRecord("kopf.objects", logging.DEBUG, __file__, 1, line, (), None)
        assert RedactInlineMaterial().filter(record)
        shown = record.getMessage()
        assert wrapped not in shown and wrapped[:40] not in shown
        assert "<redacted>" in shown
    record = logging.LogRecord("kopf.objects", logging.DEBUG, __file__, 1, "%s", (body,), None)
    assert logging.getLogger("kopf.objects").filter(record)  # installed on Kopf's logger
    assert wrapped not in record.getMessage()
    assert "kmsit1_token" in record.getMessage()  # nothing else is touched
    other = logging.LogRecord("kopf.objects", logging.DEBUG, __file__, 1, repr(wrapped), (), None)
    RedactInlineMaterial().filter(other)
    assert other.getMessage() == repr(wrapped)  # lines without the field stay as they are

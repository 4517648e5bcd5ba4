"""The operator's pure pieces: conditions, statuses, spec parsing, admission rules."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from kms_operator.operator import conditions, statuses
from kms_operator.operator.conditions import Condition, merge_conditions
from kms_operator.operator.customermasterkeys.admission import admission_problem, webhook_entries
from kms_operator.operator.customermasterkeys.aliases import (
    alias_claims,
    alias_conflict_condition,
)
from kms_operator.operator.customermasterkeys.binding import claim_of, parse_key_id
from kms_operator.operator.customermasterkeys.deletion import fresh_object
from kms_operator.operator.customermasterkeys.specs import (
    CustomerMasterKeySpec,
    default_service_of,
)
from kms_operator.store.records import KeyRecord, Origin, VersionRecord, VersionState

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _record(**changes: object) -> KeyRecord:
    base = KeyRecord(
        key_id=uuid.UUID(int=7),
        namespace="ns",
        name="k",
        origin=Origin.KMS,
        created_at=NOW,
        versions=(VersionRecord(1, NOW, VersionState.ENABLED),),
        aliases=("alias/a", "alias/b"),
    )
    return base.evolve(**changes)


def test_transition_time_kept_while_status_unchanged() -> None:
    first = merge_conditions(
        None, [Condition("Ready", True, "Enabled", "ok")], generation=1, now=NOW
    )
    later = NOW + timedelta(hours=1)
    same = merge_conditions(
        first, [Condition("Ready", True, "Enabled", "still ok")], generation=2, now=later
    )
    assert same[0]["lastTransitionTime"] == "2026-11-29T12:00:00Z"
    assert same[0]["message"] == "still ok" and same[0]["observedGeneration"] == 2
    flipped = merge_conditions(
        same, [Condition("Ready", False, "Disabled", "off")], generation=3, now=later
    )
    assert flipped[0]["lastTransitionTime"] == "2026-11-29T13:00:00Z"
    assert flipped[0]["status"] == "False"


def test_conditions_of_other_types_are_kept() -> None:
    existing = [{"type": "Custom", "status": "True", "reason": "X", "message": "m"}]
    merged = merge_conditions(
        existing, [Condition("Ready", True, "Enabled", "ok")], generation=None, now=NOW
    )
    assert {c["type"] for c in merged} == {"Custom", "Ready"}


def test_status_of_an_enabled_key() -> None:
    status = statuses.key_status(_record(), existing_conditions=None, generation=4, now=NOW)
    assert status["keyId"] == str(uuid.UUID(int=7))
    assert status["state"] == "Enabled" and status["currentVersion"] == 1
    assert status["alias"] == "alias/a"
    assert status["versions"] == [
        {"version": 1, "createdAt": "2026-11-29T12:00:00Z", "state": "Enabled"}
    ]
    assert status["observedGeneration"] == 4
    assert "material" not in status
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == conditions.ENABLED


def test_status_of_a_key_pending_deletion_and_an_external_key() -> None:
    deletion = NOW + timedelta(days=7)
    status = statuses.key_status(
        _record(deletion_date=deletion), existing_conditions=None, generation=None, now=NOW
    )
    assert status["state"] == "PendingDeletion"
    assert status["deletionDate"] == "2026-12-06T12:00:00Z"
    external = _record(
        origin=Origin.EXTERNAL, versions=(VersionRecord(1, NOW, VersionState.PENDING_IMPORT),)
    )
    status = statuses.key_status(external, existing_conditions=None, generation=None, now=NOW)
    assert status["state"] == "PendingImport"
    assert status["material"]["state"] == "PendingImport"


def test_spec_parsing_applies_defaults() -> None:
    spec = CustomerMasterKeySpec.parse({})
    assert spec == CustomerMasterKeySpec("", (), Origin.KMS, True, None, 30)
    spec = CustomerMasterKeySpec.parse(
        {"aliases": ["alias/x"], "origin": "EXTERNAL", "enabled": False, "pendingWindowDays": 7}
    )
    assert spec.aliases == ("alias/x",) and spec.origin is Origin.EXTERNAL and not spec.enabled


def test_default_service_needs_label_and_reserved_alias() -> None:
    assert (
        default_service_of({"kms.cmk.dev/default": "true"}, ("alias/kms/datakeys",)) == "datakeys"
    )
    assert default_service_of({}, ("alias/kms/datakeys",)) is None
    assert default_service_of({"kms.cmk.dev/default": "true"}, ("alias/other",)) is None


def _cmk(name: str, aliases: list[str], *, terminating: bool = False) -> dict[str, object]:
    meta: dict[str, object] = {"name": name}
    if terminating:
        meta["deletionTimestamp"] = "2026-11-29T12:00:00Z"
    return {"metadata": meta, "spec": {"aliases": aliases}}


def test_alias_conflict_seen_from_both_sides_and_not_from_terminating_objects() -> None:
    claims = alias_claims(
        [
            _cmk("a", ["alias/x"]),
            _cmk("b", ["alias/x", "alias/y"]),
            _cmk("c", ["alias/y"], terminating=True),
        ]
    )
    on_a = alias_conflict_condition("a", ["alias/x"], claims)
    on_b = alias_conflict_condition("b", ["alias/x", "alias/y"], claims)
    assert on_a.status and "b" in on_a.message
    assert on_b.status and "a" in on_b.message and "alias/y" not in on_b.message
    assert claims["alias/y"] == ["b"]  # a terminating object gives its aliases up


def _body(labels: dict[str, str] | None = None, **spec: object) -> dict[str, object]:
    return {"metadata": {"name": "k", "labels": labels or {}, "annotations": {}}, "spec": spec}


DEFAULT = {"kms.cmk.dev/default": "true"}


def test_admission_refuses_what_default_keys_forbid() -> None:
    old = _body(DEFAULT, enabled=True, aliases=["alias/kms/datakeys"])
    disabled = _body(DEFAULT, enabled=False, aliases=["alias/kms/datakeys"])
    assert "disabled" in (admission_problem("UPDATE", old, disabled, {}) or "")
    assert "deleted" in (admission_problem("DELETE", old, None, {}) or "")
    rotated = _body(DEFAULT, enabled=True, aliases=["alias/kms/datakeys"])
    rotated["metadata"]["annotations"] = {"kms.cmk.dev/rotate": "1"}  # type: ignore[index]
    assert "rotated" in (admission_problem("UPDATE", old, rotated, {}) or "")
    unlabelled = _body(None, enabled=True, aliases=["alias/kms/datakeys"])
    assert "label" in (admission_problem("UPDATE", old, unlabelled, {}) or "")
    # A write that changes none of that (the operator's finalizer patch) passes.
    assert admission_problem("UPDATE", disabled, disabled, {}) is None


def test_admission_refuses_reserved_and_taken_aliases_only_when_added() -> None:
    assert "reserved" in (
        admission_problem("CREATE", None, _body(aliases=["alias/kms/x"]), {}) or ""
    )
    taken = {"alias/t": {"other"}}
    assert "other" in (admission_problem("CREATE", None, _body(aliases=["alias/t"]), taken) or "")
    same = _body(aliases=["alias/t"])
    assert admission_problem("UPDATE", same, same, taken) is None
    assert admission_problem("CREATE", None, _body(aliases=["alias/t"]), {"alias/t": {"k"}}) is None
    assert admission_problem("DELETE", _body(aliases=["alias/t"]), None, {}) is None


def test_admission_admits_a_default_keys_deletion_only_with_its_namespace() -> None:
    """Issue 8, item 1: refusing it in a terminating namespace kept the namespace forever."""
    old = _body(DEFAULT, enabled=True, aliases=["alias/kms/datakeys"])
    assert "deleted" in (admission_problem("DELETE", old, None, {}) or "")
    assert admission_problem("DELETE", old, None, {}, namespace_terminating=True) is None
    # Only deletion: a terminating namespace does not open the other rules.
    disabled = _body(DEFAULT, enabled=False, aliases=["alias/kms/datakeys"])
    assert "disabled" in (
        admission_problem("UPDATE", old, disabled, {}, namespace_terminating=True) or ""
    )


def test_webhook_entries_point_at_the_handler() -> None:
    (entry,) = webhook_entries({"url": "https://kms.kms-system.svc:9443", "caBundle": "Q0E="})
    assert entry["clientConfig"] == {
        "url": "https://kms.kms-system.svc:9443/cmk-admission",
        "caBundle": "Q0E=",
    }
    assert entry["failurePolicy"] == "Ignore" and entry["sideEffects"] == "None"
    (rule,) = entry["rules"]
    assert rule["resources"] == ["customermasterkeys"]
    assert rule["operations"] == ["CREATE", "UPDATE", "DELETE"]
    (by_service,) = webhook_entries({"service": {"name": "kms", "namespace": "n", "port": 9443}})
    assert by_service["clientConfig"]["service"]["path"] == "/cmk-admission"


def test_recreated_object_claims_its_key() -> None:
    body = {
        "metadata": {
            "name": "k",
            "namespace": "ns",
            "labels": {"a": "b"},
            "annotations": {
                "kms.cmk.dev/cancel-deletion": "true",
                "kopf.kms.cmk.dev/last-handled-configuration": "{}",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "team": "payments",
            },
        },
        "spec": {"enabled": True, "aliases": ["alias/a"]},
    }
    fresh = fresh_object(body, _record(), enabled=False)
    assert fresh["metadata"]["annotations"] == {
        "team": "payments",
        "kms.cmk.dev/key-id": str(uuid.UUID(int=7)),
    }
    assert fresh["spec"] == {"enabled": False, "aliases": ["alias/a"]}
    assert claim_of(fresh["metadata"], {}) == (
        str(uuid.UUID(int=7)),
        "the annotation kms.cmk.dev/key-id",
    )
    assert claim_of(fresh["metadata"], {"keyId": "x"}) == ("x", "status.keyId")
    assert parse_key_id(str(uuid.UUID(int=7))) == uuid.UUID(int=7)
    for spelling in ("{" + str(uuid.UUID(int=7)) + "}", "urn:uuid:" + str(uuid.UUID(int=7))):
        assert parse_key_id(spelling) is None

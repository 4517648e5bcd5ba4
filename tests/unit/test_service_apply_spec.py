"""``KeyService.apply_spec``: a whole spec in one store transaction (issue 9, item 2).

The operator used to apply a CustomerMasterKey's spec field by field, one transaction each,
so a crash or a refused field left the store holding part of a spec. Now the service decides
every field, reports the refused ones as problems, and writes the rest (and a rotation on
demand) at once, or nothing when nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.support.clocks import ManualClock

from kms_operator.errors import (
    AliasConflict,
    DefaultKeyProtected,
    InvalidRequest,
    KeyDisabled,
    KeyPendingDeletion,
    NotFound,
    StoreError,
)
from kms_operator.keys.service import KeyService, KeySettings
from kms_operator.store import sqlite as sqlite_store
from kms_operator.store.records import Origin, VersionState
from kms_operator.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.unit

NS = "payments"


@pytest.fixture
def writes(store: SqliteKeyStore, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every ``store.update`` call (one per transaction), with what it was given."""
    calls: list[dict[str, Any]] = []
    real = store.update

    def counted(record: Any, **kwargs: Any) -> None:
        calls.append({"record": record, **kwargs})
        real(record, **kwargs)

    monkeypatch.setattr(store, "update", counted)
    return calls


@pytest.fixture
def fault_at() -> Iterator[Callable[[str], None]]:
    """Make the store fail at one fault point inside its transaction."""

    def arm(point: str) -> None:
        def hook(name: str) -> None:
            if name == point:
                raise RuntimeError(f"failed at {name}")

        sqlite_store.fault_hook = hook

    yield arm
    sqlite_store.fault_hook = None


def test_a_whole_spec_is_one_store_write(
    service: KeyService,
    clock: ManualClock,
    writes: list[dict[str, Any]],
    reopen: Callable[[], KeyService],
) -> None:
    key = service.create_key(NS, "orders", aliases=["alias/old"])
    desired = KeySettings("orders", False, ("alias/z", "alias/a", "alias/z"), 90)

    record, problems = service.apply_spec(key.key_id, desired)

    assert problems == []
    assert len(writes) == 1
    assert record.description == "orders" and not record.enabled
    assert record.aliases == ("alias/a", "alias/z")
    assert record.rotation_period_days == 90
    assert record.next_rotation_at == clock.now() + service.timescale.days(90)
    assert record.versions == key.versions
    assert reopen().get(key.key_id) == record
    assert service.resolve(NS, "alias/a").key_id == key.key_id
    with pytest.raises(NotFound):
        service.resolve(NS, "alias/old")


def test_an_unchanged_spec_writes_nothing(
    service: KeyService, writes: list[dict[str, Any]]
) -> None:
    key = service.create_key(NS, "orders", description="d", aliases=["alias/o"])

    result = service.apply_spec(key.key_id, KeySettings("d", True, ("alias/o",), None))

    assert result.record is service.get(key.key_id)
    assert result.problems == []
    assert writes == []


def test_a_refused_field_does_not_block_the_others(
    service: KeyService, writes: list[dict[str, Any]]
) -> None:
    key = service.create_key(NS, "orders", aliases=["alias/orders"])

    record, problems = service.apply_spec(
        key.key_id, KeySettings("changed", False, ("alias/kms/mine",), 3000)
    )

    assert [type(p) for p in problems] == [InvalidRequest, InvalidRequest]
    assert [p.field for p in problems] == ["aliases", "rotation.periodDays"]  # type: ignore[attr-defined]
    assert "reserved" in problems[0].message and "between 90 and 2560" in problems[1].message
    assert (record.description, record.enabled) == ("changed", False)
    assert record.aliases == ("alias/orders",) and record.rotation_period_days is None
    assert len(writes) == 1


def test_a_default_key_stays_enabled_and_keeps_its_alias(service: KeyService) -> None:
    key = service.create_key(
        NS, "default-datakeys", aliases=["alias/kms/datakeys"], default_service="datakeys"
    )

    record, problems = service.apply_spec(key.key_id, KeySettings("described", False, (), None))

    assert [type(p) for p in problems] == [DefaultKeyProtected, DefaultKeyProtected]
    assert "cannot be disabled" in problems[0].message and "alias" in problems[1].message
    assert record.enabled and record.aliases == ("alias/kms/datakeys",)
    assert record.description == "described"
    more = KeySettings("", True, ("alias/kms/datakeys", "alias/extra"), None)
    assert service.apply_spec(key.key_id, more).record.aliases == (
        "alias/extra",
        "alias/kms/datakeys",
    )


def test_an_alias_held_elsewhere_is_a_conflict_naming_the_holder(service: KeyService) -> None:
    holder = service.create_key(NS, "holder", aliases=["alias/shared"])
    asking = service.create_key(NS, "asking")

    record, problems = service.apply_spec(
        asking.key_id, KeySettings("", True, ("alias/own", "alias/shared"), None)
    )

    (problem,) = problems
    assert isinstance(problem, AliasConflict)
    assert f"{NS}/holder" in problem.message and str(holder.key_id) in problem.message
    assert record.aliases == ()  # the aliases are one field: none of them is taken
    assert service.resolve(NS, "alias/shared").key_id == holder.key_id


def test_a_rotation_on_demand_goes_with_the_spec_in_the_same_write(
    service: KeyService, writes: list[dict[str, Any]], reopen: Callable[[], KeyService]
) -> None:
    key = service.create_key(NS, "orders", enabled=False)
    service.apply_spec(key.key_id, KeySettings(enabled=True))
    old = service.encrypt(NS, "orders", b"version 1")
    writes.clear()

    record, problems = service.apply_spec(
        key.key_id, KeySettings("rotated", True, (), None), rotate=True
    )

    assert problems == []
    assert len(writes) == 1 and set(writes[0]["add_material"]) == {2}
    assert record.description == "rotated"
    assert [(v.version, v.state) for v in record.versions] == [
        (1, VersionState.ENABLED),
        (2, VersionState.ENABLED),
    ]
    assert record.next_rotation_at is None  # on demand: no schedule is started
    restarted = reopen()
    assert restarted.encrypt(NS, "orders", b"version 2").key_version == 2
    assert restarted.decrypt(old.ciphertext_blob).key_version == 1


def test_a_refused_rotation_on_demand_is_a_problem(service: KeyService) -> None:
    external = service.create_key(NS, "byok", origin=Origin.EXTERNAL)
    disabled = service.create_key(NS, "off", enabled=False)
    default = service.create_key(
        NS, "default-datakeys", aliases=["alias/kms/datakeys"], default_service="datakeys"
    )

    _, (origin,) = service.apply_spec(external.key_id, KeySettings(), rotate=True)
    off, (state,) = service.apply_spec(disabled.key_id, KeySettings("d", False), rotate=True)
    _, (protected,) = service.apply_spec(
        default.key_id, KeySettings(aliases=("alias/kms/datakeys",)), rotate=True
    )

    assert isinstance(origin, InvalidRequest) and origin.field == "origin"
    assert isinstance(state, KeyDisabled) and "Disabled" in state.message
    assert off.description == "d" and off.current_version == 1
    assert isinstance(protected, DefaultKeyProtected) and "rotated on demand" in (protected.message)
    assert service.get(default.key_id).current_version == 1


def test_a_key_pending_deletion_takes_no_spec_not_even_an_unchanged_one(
    service: KeyService, writes: list[dict[str, Any]]
) -> None:
    key = service.create_key(NS, "orders")
    pending = service.schedule_deletion(key.key_id, 7)
    writes.clear()

    for desired in (KeySettings(), KeySettings("changed", False)):
        record, (problem,) = service.apply_spec(key.key_id, desired)
        assert record is service.get(key.key_id)
        assert isinstance(problem, KeyPendingDeletion)
        assert str(pending.deletion_date) in problem.message
    assert writes == []


def test_a_store_failure_is_raised_and_changes_nothing(
    service: KeyService, store: SqliteKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = service.create_key(NS, "orders")

    def full(*args: Any, **kwargs: Any) -> None:
        raise StoreError("the disk is full")

    monkeypatch.setattr(store, "update", full)
    with pytest.raises(StoreError):
        service.apply_spec(key.key_id, KeySettings("changed", False, ("alias/o",), 90))
    assert service.get(key.key_id) == key


@pytest.mark.parametrize("point", ["update:key-row", "update:versions", "update:material"])
def test_a_failure_inside_the_transaction_leaves_the_key_as_it_was(
    service: KeyService,
    reopen: Callable[[], KeyService],
    fault_at: Callable[[str], None],
    point: str,
) -> None:
    key = service.create_key(NS, "orders", aliases=["alias/orders"])
    fault_at(point)

    with pytest.raises(RuntimeError, match=point):
        service.apply_spec(
            key.key_id, KeySettings("changed", False, ("alias/new",), 90), rotate=True
        )

    assert service.get(key.key_id) == key  # nothing was published
    assert reopen().get(key.key_id) == key  # nothing was committed

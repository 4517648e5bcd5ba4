"""The lifecycle verbs of KeyService (DESIGN.md section 2), one rule at a time.

Creation, enable/disable, rotation (on demand and automatic), aliases and resolution,
scheduled deletion, cancellation and destruction, default keys, deadlines and the length of a
day. Crypto operations are in test_service_crypto.py, imported material in
test_service_import.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from tests.support.changes import fire, rotate, set_aliases, set_enabled, set_rotation_period
from tests.support.clocks import ManualClock

from kms_operator.crypto.wrapping import WrappingAlgorithm, WrappingKeySpec
from kms_operator.errors import (
    AliasConflict,
    DefaultKeyProtected,
    InvalidRequest,
    KeyDisabled,
    KeyPendingDeletion,
    KeyStateError,
    NotFound,
)
from kms_operator.keys.clock import Timescale
from kms_operator.keys.service import KeyService, Timer
from kms_operator.store.records import KeyState, Origin, VersionState
from kms_operator.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.unit

NS = "payments"
DAY = timedelta(days=1)


# -- create ------------------------------------------------------------------------------


def test_create_kms_key_is_enabled_with_one_version(
    service: KeyService, clock: ManualClock
) -> None:
    record = service.create_key(NS, "orders", description="orders", aliases=["alias/orders"])

    assert record.state is KeyState.ENABLED
    assert record.origin is Origin.KMS
    assert record.current_version == 1
    assert record.versions[0].state is VersionState.ENABLED
    assert record.created_at == clock.now()
    assert record.aliases == ("alias/orders",)
    assert service.encrypt(NS, "orders", b"x").key_version == 1


def test_create_external_key_starts_pending_import(service: KeyService) -> None:
    record = service.create_key(NS, "byok", origin=Origin.EXTERNAL)

    assert record.state is KeyState.PENDING_IMPORT
    assert record.versions[0].state is VersionState.PENDING_IMPORT


def test_create_disabled_key(service: KeyService) -> None:
    record = service.create_key(NS, "off", enabled=False)

    assert record.state is KeyState.DISABLED


def test_create_is_idempotent_per_namespace_and_name(service: KeyService) -> None:
    first = service.create_key(NS, "orders")
    again = service.create_key(NS, "orders", description="retried after a crash")
    elsewhere = service.create_key("billing", "orders")

    assert again.key_id == first.key_id
    assert again == first
    assert elsewhere.key_id != first.key_id
    assert len(service.keys()) == 2


def test_create_is_idempotent_across_a_restart(
    service: KeyService, reopen: Callable[[], KeyService]
) -> None:
    first = service.create_key(NS, "orders")

    assert reopen().create_key(NS, "orders").key_id == first.key_id


def test_external_key_takes_a_given_key_id_which_survives_a_restart(
    service: KeyService, reopen: Callable[[], KeyService]
) -> None:
    given = uuid.uuid4()
    record = service.create_key(NS, "shared", origin=Origin.EXTERNAL, key_id=given)

    assert record.key_id == given
    assert service.create_key(NS, "shared", origin=Origin.EXTERNAL, key_id=given) == record
    assert reopen().get(given).name == "shared"


def test_a_given_key_id_is_refused_for_kms_keys(service: KeyService) -> None:
    with pytest.raises(InvalidRequest, match="only EXTERNAL keys") as caught:
        service.create_key(NS, "made-here", key_id=uuid.uuid4())

    assert caught.value.field == "keyId"
    assert service.find(NS, "made-here") is None


def test_a_key_id_is_never_reused(service: KeyService) -> None:
    taken = service.create_key(NS, "first").key_id

    with pytest.raises(InvalidRequest, match="taken by key payments/first"):
        service.create_key("billing", "second", origin=Origin.EXTERNAL, key_id=taken)
    assert service.find("billing", "second") is None


def test_an_existing_key_with_another_id_is_not_returned_for_a_given_id(
    service: KeyService,
) -> None:
    existing = service.create_key(NS, "shared", origin=Origin.EXTERNAL)

    with pytest.raises(InvalidRequest, match=f"exists already with key id {existing.key_id}"):
        service.create_key(NS, "shared", origin=Origin.EXTERNAL, key_id=uuid.uuid4())


@pytest.mark.parametrize("days", [89, 2561, 0, -1])
def test_rotation_period_out_of_range_is_refused(service: KeyService, days: int) -> None:
    with pytest.raises(InvalidRequest) as caught:
        service.create_key(NS, "orders", rotation_period_days=days)

    assert caught.value.field == "rotation.periodDays"
    assert service.find(NS, "orders") is None


def test_external_key_refuses_a_rotation_period(service: KeyService) -> None:
    with pytest.raises(InvalidRequest) as caught:
        service.create_key(NS, "byok", origin=Origin.EXTERNAL, rotation_period_days=365)

    assert caught.value.field == "rotation.periodDays"


# -- enable / disable --------------------------------------------------------------------


def test_disabled_key_refuses_crypto_naming_the_state_and_keeps_material(
    service: KeyService,
) -> None:
    key = service.create_key(NS, "orders")
    sealed = service.encrypt(NS, "orders", b"before", {"a": "b"})

    disabled = set_enabled(service, key.key_id, False)

    assert disabled.state is KeyState.DISABLED
    assert disabled.versions == key.versions
    for attempt in (
        lambda: service.encrypt(NS, "orders", b"x"),
        lambda: service.decrypt(sealed.ciphertext_blob, {"a": "b"}),
        lambda: service.generate_data_key(NS, "orders"),
        lambda: service.re_encrypt(sealed.ciphertext_blob, NS, "orders", source_context={"a": "b"}),
    ):
        with pytest.raises(KeyDisabled, match="is Disabled"):
            attempt()

    enabled = set_enabled(service, key.key_id, True)

    assert enabled.state is KeyState.ENABLED
    assert service.decrypt(sealed.ciphertext_blob, {"a": "b"}).plaintext == b"before"


def test_disable_is_idempotent(service: KeyService) -> None:
    key = service.create_key(NS, "orders")
    once = set_enabled(service, key.key_id, False)

    assert set_enabled(service, key.key_id, False) is once


def test_re_enabled_key_decrypts_old_blobs_after_a_restart(
    service: KeyService, reopen: Callable[[], KeyService]
) -> None:
    key = service.create_key(NS, "orders")
    sealed = service.encrypt(NS, "orders", b"kept")
    set_enabled(service, key.key_id, False)

    restarted = reopen()
    assert restarted.get(key.key_id).state is KeyState.DISABLED
    set_enabled(restarted, key.key_id, True)

    assert restarted.decrypt(sealed.ciphertext_blob).plaintext == b"kept"


# -- rotation ----------------------------------------------------------------------------


def test_rotate_adds_a_version_and_old_versions_still_decrypt(
    service: KeyService, clock: ManualClock
) -> None:
    key = service.create_key(NS, "orders")
    old = service.encrypt(NS, "orders", b"v1 data")
    clock.advance(DAY)

    rotated = rotate(service, key.key_id)

    assert rotated.current_version == 2
    assert [v.version for v in rotated.versions] == [1, 2]
    assert all(v.state is VersionState.ENABLED for v in rotated.versions)
    assert rotated.last_rotated_at == clock.now()
    new = service.encrypt(NS, "orders", b"v2 data")
    assert new.key_version == 2
    assert service.decrypt(old.ciphertext_blob).plaintext == b"v1 data"
    assert service.decrypt(old.ciphertext_blob).key_version == 1
    assert service.decrypt(new.ciphertext_blob).plaintext == b"v2 data"


def test_rotated_versions_survive_a_restart(
    service: KeyService, reopen: Callable[[], KeyService]
) -> None:
    key = service.create_key(NS, "orders")
    blobs = [service.encrypt(NS, "orders", b"v1").ciphertext_blob]
    for _ in range(3):
        rotate(service, key.key_id)
        blobs.append(service.encrypt(NS, "orders", b"next").ciphertext_blob)

    restarted = reopen()

    assert restarted.get(key.key_id) == service.get(key.key_id)
    assert [restarted.decrypt(b).key_version for b in blobs] == [1, 2, 3, 4]


def test_external_key_refuses_on_demand_rotation(service: KeyService) -> None:
    key = service.create_key(NS, "byok", origin=Origin.EXTERNAL)

    with pytest.raises(InvalidRequest, match="EXTERNAL") as caught:
        rotate(service, key.key_id)

    assert caught.value.field == "origin"


def test_only_enabled_keys_rotate(service: KeyService) -> None:
    key = service.create_key(NS, "orders")
    set_enabled(service, key.key_id, False)

    with pytest.raises(KeyDisabled, match="Disabled"):
        rotate(service, key.key_id)

    set_enabled(service, key.key_id, True)
    service.schedule_deletion(key.key_id, 7)
    with pytest.raises(KeyPendingDeletion, match="PendingDeletion"):
        rotate(service, key.key_id)
    assert service.get(key.key_id).current_version == 1


def test_automatic_rotation_follows_the_period(service: KeyService, clock: ManualClock) -> None:
    start = clock.now()
    key = service.create_key(NS, "orders", rotation_period_days=90)
    assert key.next_rotation_at == start + 90 * DAY
    assert service.next_deadline(key.key_id) == start + 90 * DAY

    clock.advance(90 * DAY - timedelta(seconds=1))
    assert fire(service, key.key_id, Timer.ROTATION) is None

    clock.advance(timedelta(seconds=1))
    rotated = fire(service, key.key_id, Timer.ROTATION)

    assert rotated is not None
    assert rotated.current_version == 2
    assert rotated.last_rotated_at == clock.now()
    assert rotated.next_rotation_at == clock.now() + 90 * DAY
    assert fire(service, key.key_id, Timer.ROTATION) is None


def test_automatic_rotation_after_a_long_outage_rotates_once(
    service: KeyService, clock: ManualClock
) -> None:
    key = service.create_key(NS, "orders", rotation_period_days=90)
    clock.advance(1000 * DAY)

    rotated = fire(service, key.key_id, Timer.ROTATION)

    assert rotated is not None
    assert rotated.current_version == 2
    assert rotated.next_rotation_at == clock.now() + 90 * DAY
    assert fire(service, key.key_id, Timer.ROTATION) is None


def test_on_demand_rotation_keeps_the_automatic_schedule(
    service: KeyService, clock: ManualClock
) -> None:
    key = service.create_key(NS, "orders", rotation_period_days=365)
    clock.advance(10 * DAY)

    rotated = rotate(service, key.key_id)

    assert rotated.next_rotation_at == key.next_rotation_at


def test_automatic_rotation_waits_while_disabled(service: KeyService, clock: ManualClock) -> None:
    key = service.create_key(NS, "orders", rotation_period_days=90)
    set_enabled(service, key.key_id, False)
    clock.advance(100 * DAY)

    assert fire(service, key.key_id, Timer.ROTATION) is None
    assert service.next_deadline(key.key_id) is None

    set_enabled(service, key.key_id, True)
    rotated = fire(service, key.key_id, Timer.ROTATION)
    assert rotated is not None
    assert rotated.current_version == 2


def test_set_rotation_period_turns_rotation_on_and_off(
    service: KeyService, clock: ManualClock
) -> None:
    key = service.create_key(NS, "orders")
    assert key.next_rotation_at is None
    assert fire(service, key.key_id, Timer.ROTATION) is None

    on = set_rotation_period(service, key.key_id, 2560)
    assert on.next_rotation_at == clock.now() + 2560 * DAY

    with pytest.raises(InvalidRequest):
        set_rotation_period(service, key.key_id, 3000)

    off = set_rotation_period(service, key.key_id, None)
    assert off.rotation_period_days is None
    assert off.next_rotation_at is None
    clock.advance(3000 * DAY)
    assert fire(service, key.key_id, Timer.ROTATION) is None


# -- aliases and resolution --------------------------------------------------------------


@pytest.mark.parametrize("alias", ["orders", "alias/", "alias/has space", "Alias/x", "alias/é"])
def test_malformed_alias_is_refused(service: KeyService, alias: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        service.create_key(NS, "orders", aliases=[alias])

    assert caught.value.field == "aliases"


def test_alias_is_unique_per_namespace_and_the_conflict_names_the_other_key(
    service: KeyService,
) -> None:
    first = service.create_key(NS, "orders", aliases=["alias/shared"])

    with pytest.raises(AliasConflict, match=f"{NS}/orders") as caught:
        service.create_key(NS, "invoices", aliases=["alias/shared"])
    assert str(first.key_id) in caught.value.message
    assert service.find(NS, "invoices") is None

    other = service.create_key(NS, "invoices")
    with pytest.raises(AliasConflict, match=f"{NS}/orders"):
        set_aliases(service, other.key_id, ["alias/shared"])

    # The same alias in another namespace is another alias.
    service.create_key("billing", "orders", aliases=["alias/shared"])


def test_alias_moves_after_the_owner_lets_it_go(service: KeyService) -> None:
    first = service.create_key(NS, "orders", aliases=["alias/current"])
    second = service.create_key(NS, "orders-v2")

    set_aliases(service, first.key_id, [])
    set_aliases(service, second.key_id, ["alias/current"])

    assert service.resolve(NS, "alias/current").key_id == second.key_id


def test_reserved_default_alias_prefix_is_refused_for_user_keys(service: KeyService) -> None:
    with pytest.raises(InvalidRequest, match="reserved") as caught:
        service.create_key(NS, "orders", aliases=["alias/kms/datakeys"])
    assert caught.value.field == "aliases"

    key = service.create_key(NS, "orders")
    with pytest.raises(InvalidRequest, match="reserved"):
        set_aliases(service, key.key_id, ["alias/kms/mine"])


def test_resolve_by_alias_name_or_key_id(service: KeyService) -> None:
    key = service.create_key(NS, "orders", aliases=["alias/orders", "alias/team/orders"])

    assert service.resolve(NS, "orders").key_id == key.key_id
    assert service.resolve(NS, "alias/orders").key_id == key.key_id
    assert service.resolve(NS, "alias/team/orders").key_id == key.key_id
    assert service.resolve(NS, str(key.key_id)).key_id == key.key_id


def test_resolve_never_crosses_namespaces(service: KeyService) -> None:
    key = service.create_key(NS, "orders", aliases=["alias/orders"])

    for reference in ("orders", "alias/orders", str(key.key_id), str(uuid.uuid4()), "nope"):
        with pytest.raises(NotFound, match="billing"):
            service.resolve("billing", reference)
    with pytest.raises(NotFound):
        service.encrypt("billing", str(key.key_id), b"x")


def test_aliases_are_rebuilt_after_a_restart(
    service: KeyService, reopen: Callable[[], KeyService]
) -> None:
    key = service.create_key(NS, "orders", aliases=["alias/orders"])

    restarted = reopen()

    assert restarted.resolve(NS, "alias/orders").key_id == key.key_id
    with pytest.raises(AliasConflict):
        restarted.create_key(NS, "other", aliases=["alias/orders"])


# -- scheduled deletion ------------------------------------------------------------------


@pytest.mark.parametrize("days", [6, 31, 0, -7])
def test_pending_window_out_of_range_is_refused(service: KeyService, days: int) -> None:
    key = service.create_key(NS, "orders")

    with pytest.raises(InvalidRequest, match="between 7 and 30") as caught:
        service.schedule_deletion(key.key_id, days)

    assert caught.value.field == "pendingWindowDays"
    assert service.get(key.key_id).state is KeyState.ENABLED


@pytest.mark.parametrize("days", [7, 30])
def test_schedule_deletion_sets_the_date(
    service: KeyService, clock: ManualClock, days: int
) -> None:
    key = service.create_key(NS, "orders")

    pending = service.schedule_deletion(key.key_id, days)

    assert pending.state is KeyState.PENDING_DELETION
    assert pending.deletion_requested_at == clock.now()
    assert pending.deletion_date == clock.now() + days * DAY
    assert service.next_deadline(key.key_id) == pending.deletion_date


def test_a_second_deletion_request_does_not_move_the_date(
    service: KeyService, clock: ManualClock, reopen: Callable[[], KeyService]
) -> None:
    key = service.create_key(NS, "orders")
    first = service.schedule_deletion(key.key_id, 7)
    clock.advance(3 * DAY)

    again = service.schedule_deletion(key.key_id, 30)

    assert again.deletion_date == first.deletion_date
    assert reopen().schedule_deletion(key.key_id, 10).deletion_date == first.deletion_date


def test_pending_deletion_key_refuses_every_use_naming_the_date(service: KeyService) -> None:
    key = service.create_key(NS, "orders", aliases=["alias/orders"])
    sealed = service.encrypt(NS, "orders", b"data")
    pending = service.schedule_deletion(key.key_id, 7)

    for attempt in (
        lambda: service.encrypt(NS, "alias/orders", b"x"),
        lambda: service.decrypt(sealed.ciphertext_blob),
        lambda: service.generate_data_key(NS, "orders"),
        lambda: service.re_encrypt(sealed.ciphertext_blob, NS, "orders"),
        lambda: rotate(service, key.key_id),
        lambda: set_enabled(service, key.key_id, False),
        lambda: set_aliases(service, key.key_id, []),
        lambda: set_rotation_period(service, key.key_id, 365),
    ):
        with pytest.raises(KeyPendingDeletion, match="PendingDeletion") as caught:
            attempt()
        assert str(pending.deletion_date) in caught.value.message


def test_cancel_deletion_leaves_the_key_disabled_with_the_same_versions(
    service: KeyService, clock: ManualClock
) -> None:
    key = service.create_key(NS, "orders", aliases=["alias/orders"])
    rotate(service, key.key_id)
    sealed = service.encrypt(NS, "orders", b"data")
    service.schedule_deletion(key.key_id, 7)
    clock.advance(6 * DAY)

    cancelled = service.cancel_deletion(key.key_id)

    assert cancelled.state is KeyState.DISABLED
    assert cancelled.key_id == key.key_id
    assert cancelled.deletion_date is None
    assert cancelled.deletion_requested_at is None
    assert [v.version for v in cancelled.versions] == [1, 2]
    assert cancelled.aliases == ("alias/orders",)
    clock.advance(30 * DAY)
    assert fire(service, key.key_id, Timer.DESTRUCTION) is None
    set_enabled(service, key.key_id, True)
    assert service.decrypt(sealed.ciphertext_blob).plaintext == b"data"


def test_cancel_without_a_pending_deletion_is_a_state_error(service: KeyService) -> None:
    key = service.create_key(NS, "orders")

    with pytest.raises(KeyStateError, match="is Enabled, not PendingDeletion"):
        service.cancel_deletion(key.key_id)


def test_destroy_waits_for_the_date_whatever_the_clock_does(
    service: KeyService, clock: ManualClock
) -> None:
    key = service.create_key(NS, "orders")
    pending = service.schedule_deletion(key.key_id, 7)
    assert pending.deletion_date is not None

    for jump in (6 * DAY, -100 * DAY, 7 * DAY - timedelta(microseconds=1)):
        clock.set(pending.deletion_requested_at + jump)  # type: ignore[operator]
        assert fire(service, key.key_id, Timer.DESTRUCTION) is None
        assert service.get(key.key_id).state is KeyState.PENDING_DELETION

    # The wall clock stepped to the date, but no time passed: the window is not over.
    clock.set(pending.deletion_date)
    assert fire(service, key.key_id, Timer.DESTRUCTION) is None
    assert service.next_deadline(key.key_id) == pending.deletion_date + 7 * DAY
    clock.advance_monotonic(7 * DAY - timedelta(microseconds=1))
    assert fire(service, key.key_id, Timer.DESTRUCTION) is None
    assert service.next_deadline(key.key_id) == pending.deletion_date + timedelta(microseconds=1)
    clock.advance_monotonic(timedelta(microseconds=1))
    destroyed = fire(service, key.key_id, Timer.DESTRUCTION)

    assert destroyed is not None
    assert destroyed.state is KeyState.DESTROYED
    assert destroyed.destroyed_at == pending.deletion_date


def test_destroy_shreds_every_version_and_releases_name_and_aliases(
    service: KeyService,
    clock: ManualClock,
    store: SqliteKeyStore,
    reopen: Callable[[], KeyService],
) -> None:
    key = service.create_key(NS, "orders", aliases=["alias/orders"])
    old = [service.encrypt(NS, "orders", b"v1").ciphertext_blob]
    rotate(service, key.key_id)
    old.append(service.encrypt(NS, "orders", b"v2").ciphertext_blob)
    service.schedule_deletion(key.key_id, 7)
    clock.advance(8 * DAY)

    destroyed = fire(service, key.key_id, Timer.DESTRUCTION)

    assert destroyed is not None
    assert all(v.state is VersionState.DESTROYED for v in destroyed.versions)
    assert destroyed.aliases == ()
    assert all(store.load_material(key.key_id, v) is None for v in (1, 2))
    for blob in old:
        with pytest.raises(KeyStateError, match="Destroyed"):
            service.decrypt(blob)
    assert fire(service, key.key_id, Timer.DESTRUCTION) is None
    assert service.find(NS, "orders") is None
    with pytest.raises(NotFound):
        service.resolve(NS, "alias/orders")

    fresh = service.create_key(NS, "orders", aliases=["alias/orders"])
    assert fresh.key_id != key.key_id
    assert service.resolve(NS, "orders").key_id == fresh.key_id

    restarted = reopen()
    assert restarted.get(key.key_id) == destroyed
    assert restarted.resolve(NS, "orders").key_id == fresh.key_id
    assert restarted.resolve(NS, "alias/orders").key_id == fresh.key_id
    for blob in old:
        with pytest.raises(KeyStateError, match="Destroyed"):
            restarted.decrypt(blob)


def test_destroyed_key_refuses_lifecycle_verbs(service: KeyService, clock: ManualClock) -> None:
    key = service.create_key(NS, "orders")
    service.schedule_deletion(key.key_id, 7)
    clock.advance(7 * DAY)
    fire(service, key.key_id, Timer.DESTRUCTION)

    assert service.schedule_deletion(key.key_id, 7).state is KeyState.DESTROYED
    assert service.next_deadline(key.key_id) is None
    for attempt in (
        lambda: service.cancel_deletion(key.key_id),
        lambda: set_enabled(service, key.key_id, True),
        lambda: rotate(service, key.key_id),
        lambda: service.encrypt(NS, str(key.key_id), b"x"),
    ):
        with pytest.raises(KeyStateError, match="Destroyed"):
            attempt()


def test_no_destruction_without_a_deletion(service: KeyService) -> None:
    key = service.create_key(NS, "orders")

    assert fire(service, key.key_id, Timer.DESTRUCTION) is None


def test_unknown_key_id_is_not_found(service: KeyService) -> None:
    with pytest.raises(NotFound):
        service.get(uuid.uuid4())
    with pytest.raises(NotFound):
        service.schedule_deletion(uuid.uuid4(), 7)


# -- default keys ------------------------------------------------------------------------


def test_default_key_is_protected(service: KeyService) -> None:
    key = service.create_key(
        NS, "default-datakeys", aliases=["alias/kms/datakeys"], default_service="datakeys"
    )

    with pytest.raises(DefaultKeyProtected, match="disabled"):
        set_enabled(service, key.key_id, False)
    with pytest.raises(DefaultKeyProtected, match="deleted"):
        service.schedule_deletion(key.key_id, 30)
    with pytest.raises(DefaultKeyProtected, match="rotated on demand"):
        rotate(service, key.key_id)
    with pytest.raises(DefaultKeyProtected, match="imported material"):
        service.create_import_parameters(
            key.key_id, WrappingAlgorithm.RSAES_OAEP_SHA_256, WrappingKeySpec.RSA_2048
        )
    with pytest.raises(DefaultKeyProtected, match="alias"):
        set_aliases(service, key.key_id, [])

    # ... and it keeps working.
    assert service.get(key.key_id).state is KeyState.ENABLED
    sealed = service.encrypt(NS, "alias/kms/datakeys", b"still works")
    assert service.decrypt(sealed.ciphertext_blob).plaintext == b"still works"


# -- deadlines and the length of a day ---------------------------------------------------


def test_next_deadline_is_the_earliest_timer(service: KeyService, clock: ManualClock) -> None:
    plain = service.create_key(NS, "plain")
    rotating = service.create_key(NS, "rotating", rotation_period_days=90)

    assert service.next_deadline(plain.key_id) is None
    assert service.next_deadline(rotating.key_id) == clock.now() + 90 * DAY

    pending = service.schedule_deletion(rotating.key_id, 7)
    assert service.next_deadline(rotating.key_id) == pending.deletion_date

    service.cancel_deletion(rotating.key_id)
    assert service.next_deadline(rotating.key_id) is None  # Disabled: no rotation timer
    set_enabled(service, rotating.key_id, True)
    assert service.next_deadline(rotating.key_id) == rotating.next_rotation_at


def test_day_length_is_configurable(store: SqliteKeyStore, clock: ManualClock) -> None:
    fast = KeyService(store, clock=clock, timescale=Timescale(day_seconds=1))
    key = fast.create_key(NS, "orders", rotation_period_days=90)
    start = clock.now()

    assert key.next_rotation_at == start + timedelta(seconds=90)
    pending = fast.schedule_deletion(key.key_id, 7)
    assert pending.deletion_date == start + timedelta(seconds=7)

    clock.advance(timedelta(seconds=6))
    assert fire(fast, key.key_id, Timer.DESTRUCTION) is None
    clock.advance(timedelta(seconds=1))
    destroyed = fire(fast, key.key_id, Timer.DESTRUCTION)
    assert destroyed is not None
    assert destroyed.state is KeyState.DESTROYED

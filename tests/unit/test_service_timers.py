"""``KeyService.run_due`` and ``next_deadline``: the timers, decided by the service (issue 9).

The scheduler used to ask each key for its deadline and then call three ``*_if_due`` verbs
that read the key again; now one call fires every due timer (destruction, automatic rotation,
material expiry) and says what it did, and ``next_deadline()`` says when to call it again.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from tests.support.clocks import ManualClock
from tests.support.importing import Importer

from kms_operator.errors import StoreError
from kms_operator.keys.service import KeyService, Timer
from kms_operator.store.records import KeyState, Origin, VersionState
from kms_operator.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.unit

NS = "payments"
DAY = timedelta(days=1)
MATERIAL = bytes(range(32))


def test_nothing_due_fires_nothing_and_the_next_deadline_is_the_earliest(
    service: KeyService, clock: ManualClock
) -> None:
    service.create_key(NS, "plain")
    assert service.next_deadline() is None
    rotating = service.create_key(NS, "rotating", rotation_period_days=90)
    doomed = service.schedule_deletion(service.create_key(NS, "doomed").key_id, 7)

    assert service.run_due(clock.now()) == []
    assert service.next_deadline() == doomed.deletion_date
    assert service.next_deadline(rotating.key_id) == rotating.next_rotation_at
    clock.advance(8 * DAY)
    service.run_due(clock.now())
    assert service.next_deadline() == rotating.next_rotation_at  # the destroyed key has none


def test_every_due_timer_fires_once_and_says_which(
    service: KeyService, clock: ManualClock, importer: Importer
) -> None:
    doomed = service.create_key(NS, "doomed")
    service.schedule_deletion(doomed.key_id, 7)
    rotating = service.create_key(NS, "rotating", rotation_period_days=90)
    byok = service.create_key(NS, "byok", origin=Origin.EXTERNAL)
    importer.import_material(byok.key_id, MATERIAL, valid_to=clock.now() + 30 * DAY)
    untouched = service.create_key(NS, "untouched", rotation_period_days=365)
    clock.advance(90 * DAY)

    fired = {record.key_id: (record, timer) for record, timer in service.run_due(clock.now())}

    assert {key_id: timer for key_id, (_, timer) in fired.items()} == {
        doomed.key_id: Timer.DESTRUCTION,
        rotating.key_id: Timer.ROTATION,
        byok.key_id: Timer.EXPIRY,
    }
    for key_id, (record, _) in fired.items():
        assert record == service.get(key_id)  # what it returns is what the store now holds
    assert fired[doomed.key_id][0].state is KeyState.DESTROYED
    rotated = fired[rotating.key_id][0]
    assert rotated.current_version == 2 and rotated.last_rotated_at == clock.now()
    assert rotated.next_rotation_at == clock.now() + 90 * DAY
    expired = fired[byok.key_id][0]
    assert expired.versions[0].state is VersionState.PENDING_IMPORT
    assert service.get(untouched.key_id) == untouched
    assert service.run_due(clock.now()) == []


def test_a_failing_key_is_skipped_and_retried_while_the_others_fire(
    service: KeyService,
    store: SqliteKeyStore,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    doomed = service.create_key(NS, "doomed")
    service.schedule_deletion(doomed.key_id, 7)
    rotating = service.create_key(NS, "rotating", rotation_period_days=90)
    clock.advance(91 * DAY)
    real_destroy = store.destroy

    def full(*args: Any, **kwargs: Any) -> None:
        raise StoreError("the disk is full")

    monkeypatch.setattr(store, "destroy", full)
    with caplog.at_level(logging.WARNING):
        fired = service.run_due(clock.now())

    assert [(r.key_id, timer) for r, timer in fired] == [(rotating.key_id, Timer.ROTATION)]
    assert service.get(doomed.key_id).state is KeyState.PENDING_DELETION
    assert any(str(doomed.key_id) in r.getMessage() and "disk is full" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert service.next_deadline() is not None and service.next_deadline() <= clock.now()

    monkeypatch.setattr(store, "destroy", real_destroy)
    ((destroyed, timer),) = service.run_due(clock.now())
    assert (destroyed.key_id, timer) == (doomed.key_id, Timer.DESTRUCTION)


def test_automatic_rotation_waits_while_the_key_is_not_enabled(
    service: KeyService, clock: ManualClock
) -> None:
    key = service.create_key(NS, "orders", rotation_period_days=90, enabled=False)
    clock.advance(100 * DAY)

    assert service.run_due(clock.now()) == []
    assert service.next_deadline(key.key_id) is None
    assert service.get(key.key_id).current_version == 1

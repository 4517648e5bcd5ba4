"""Destruction waits on the wall clock and on elapsed time (issue 8, item 8).

A key is destroyed only when its window has passed on the wall clock (``deletion_date``) and
on the store's elapsed time: monotonic readings accumulated and persisted in the store, which a
clock step cannot advance and a restart does not lose (it resumes from the value persisted, so
a crash can only delay a destruction). The length of a day must be positive.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from tests.support.changes import fire
from tests.support.clocks import ManualClock
from tests.support.schemas import downgrade

from kms_operator.keys.clock import Timescale, microseconds
from kms_operator.keys.elapsed import ElapsedTime
from kms_operator.keys.service import KeyService, Timer
from kms_operator.store.records import KeyState
from kms_operator.store.rootkey import RootKey
from kms_operator.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.unit

NS = "team-a"
DAY = timedelta(days=1)
US = timedelta(microseconds=1)
REAL_DAY = Timescale(86400)


@pytest.fixture
def restart(
    store_path: Path, root_key: RootKey
) -> Iterator[Callable[[ManualClock], tuple[KeyService, SqliteKeyStore]]]:
    """A new process over the same store, with its own clock (a reboot resets monotonic)."""
    opened: list[SqliteKeyStore] = []

    def _restart(clock: ManualClock) -> tuple[KeyService, SqliteKeyStore]:
        store = SqliteKeyStore(store_path, root_key)
        opened.append(store)
        return KeyService(store, clock=clock, timescale=REAL_DAY), store

    yield _restart
    for store in opened:
        store.close()


@pytest.mark.parametrize("day_seconds", [0, -1, -86400.0, math.nan, math.inf, -math.inf])
def test_a_day_must_last_a_positive_time(day_seconds: float) -> None:
    with pytest.raises(ValueError, match="positive number of seconds"):
        Timescale(day_seconds)


def test_a_short_day_is_fine() -> None:
    assert Timescale(0.001).days(7) == timedelta(milliseconds=7)


def test_a_forward_step_of_the_wall_clock_destroys_nothing(
    service: KeyService, clock: ManualClock
) -> None:
    key = service.create_key(NS, "orders")
    pending = service.schedule_deletion(key.key_id, 7)
    clock.step(400 * DAY)  # NTP, a wrong host clock: no time passed
    assert fire(service, key.key_id, Timer.DESTRUCTION) is None
    assert service.get(key.key_id).state is KeyState.PENDING_DELETION
    assert service.next_deadline(key.key_id) == clock.now() + 7 * DAY
    clock.advance(7 * DAY - US)
    assert fire(service, key.key_id, Timer.DESTRUCTION) is None
    clock.advance(US)
    destroyed = fire(service, key.key_id, Timer.DESTRUCTION)
    assert destroyed is not None and destroyed.state is KeyState.DESTROYED
    assert destroyed.destroyed_at == pending.deletion_date + 400 * DAY  # type: ignore[operator]


class _RunningClock(ManualClock):
    """Time passes between readings, as on a real machine: each wall-clock read moves both
    clocks by a microsecond."""

    def now(self) -> datetime:
        return self.advance(US)


def test_the_scheduler_finds_a_key_due_although_time_runs_between_readings(
    store: SqliteKeyStore,
) -> None:
    clock = _RunningClock()
    service = KeyService(store, clock=clock, timescale=REAL_DAY)
    key = service.create_key(NS, "orders")
    service.schedule_deletion(key.key_id, 7)
    clock.advance(7 * DAY)
    for _ in range(100):  # the scheduler's loop: read now, then the deadline, act if due
        now = clock.now()
        deadline = service.next_deadline(key.key_id)
        assert deadline is not None
        if deadline <= now:
            break
        clock.advance(deadline - now)
    else:
        pytest.fail(f"never due: the deadline stays after now ({deadline} > {now})")
    assert fire(service, key.key_id, Timer.DESTRUCTION) is not None


def test_a_backward_step_waits_for_the_wall_clock_too(
    service: KeyService, clock: ManualClock
) -> None:
    key = service.create_key(NS, "orders")
    pending = service.schedule_deletion(key.key_id, 7)
    assert pending.deletion_date is not None
    clock.step(-30 * DAY)
    clock.advance_monotonic(8 * DAY)  # the window passed, the wall clock is a month behind
    assert fire(service, key.key_id, Timer.DESTRUCTION) is None
    assert service.next_deadline(key.key_id) == pending.deletion_date
    clock.set(pending.deletion_date)
    assert fire(service, key.key_id, Timer.DESTRUCTION) is not None


def test_time_persisted_before_a_restart_is_kept(
    service: KeyService,
    clock: ManualClock,
    store: SqliteKeyStore,
    restart: Callable[[ManualClock], tuple[KeyService, SqliteKeyStore]],
) -> None:
    key = service.create_key(NS, "orders")
    pending = service.schedule_deletion(key.key_id, 7)
    assert pending.deletion_requested_elapsed == store.load_elapsed()  # written with it
    clock.advance(3 * DAY)
    assert fire(service, key.key_id, Timer.DESTRUCTION) is None  # a check persists the elapsed time
    assert store.load_elapsed() == pending.deletion_requested_elapsed + microseconds(3 * DAY)
    # The machine reboots: a new monotonic clock, read from another origin.
    rebooted = ManualClock(clock.now(), monotonic_ns=5)
    again, _ = restart(rebooted)
    rebooted.advance(4 * DAY - US)
    assert fire(again, key.key_id, Timer.DESTRUCTION) is None
    rebooted.advance(US)
    assert fire(again, key.key_id, Timer.DESTRUCTION) is not None


def test_a_crash_loses_only_unpersisted_time_so_it_only_delays(
    service: KeyService,
    clock: ManualClock,
    restart: Callable[[ManualClock], tuple[KeyService, SqliteKeyStore]],
) -> None:
    key = service.create_key(NS, "orders")
    pending = service.schedule_deletion(key.key_id, 7)
    clock.advance(6 * DAY)  # nothing checks, nothing persists: then the process is killed
    again, _ = restart(clock)
    clock.advance(DAY)
    assert clock.now() == pending.deletion_date
    # 1 day of the 7 counted after the crash:
    assert fire(again, key.key_id, Timer.DESTRUCTION) is None
    assert again.next_deadline(key.key_id) == clock.now() + 6 * DAY
    clock.advance(6 * DAY)
    assert fire(again, key.key_id, Timer.DESTRUCTION) is not None


def test_next_deadline_persists_in_the_background_every_few_seconds(
    service: KeyService, clock: ManualClock, store: SqliteKeyStore
) -> None:
    key = service.create_key(NS, "orders")
    start = store.load_elapsed()
    every = timedelta(microseconds=ElapsedTime.PERSIST_EVERY_US)
    clock.advance(every - US)
    service.next_deadline(key.key_id)  # not due yet: nothing is written
    assert not service.elapsed.persisting
    assert store.load_elapsed() == start
    clock.advance(US)
    service.next_deadline(key.key_id)
    deadline = time.monotonic() + 10  # the background write: poll, with a bound
    while store.load_elapsed() == start and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.load_elapsed() == start + microseconds(every)


def test_the_persisted_counter_never_goes_back(store: SqliteKeyStore) -> None:
    store.save_elapsed(1000)
    store.save_elapsed(10)
    assert store.load_elapsed() == 1000


def test_keys_pending_in_an_older_store_restart_their_window(
    tmp_path: Path, root_key: RootKey, clock: ManualClock
) -> None:
    path = tmp_path / "v2.db"
    store = SqliteKeyStore(path, root_key)
    service = KeyService(store, clock=clock, timescale=REAL_DAY)
    pending = service.schedule_deletion(service.create_key(NS, "old").key_id, 7)
    enabled = service.create_key(NS, "enabled")
    store.close()
    downgrade(path, 2)
    clock.advance(30 * DAY)  # the operator was down (or upgraded) for a month

    upgraded = SqliteKeyStore(path, root_key)
    try:
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT value FROM meta WHERE name = 'elapsed-us'").fetchone() == (0,)
        conn.close()
        service = KeyService(upgraded, clock=clock, timescale=REAL_DAY)
        assert service.get(pending.key_id).deletion_requested_elapsed == 0
        assert service.get(enabled.key_id).deletion_requested_elapsed is None
        # Past its date on the wall clock, but its window starts again on elapsed time.
        assert fire(service, pending.key_id, Timer.DESTRUCTION) is None
        assert service.next_deadline(pending.key_id) == clock.now() + 7 * DAY
        clock.advance(7 * DAY)
        assert fire(service, pending.key_id, Timer.DESTRUCTION) is not None
    finally:
        upgraded.close()

"""The deadline scheduler survives any exception (issue 8, item 7).

A full disk made the destruction raise ``sqlite3.OperationalError`` and the scheduler task
died with it, and the process with the task. Now a failed scan is logged, retried after an
exponential, capped back-off, and :meth:`DeadlineScheduler.problem` reports it until a scan
works again. The back-off's sleep is injected: nothing here waits on the wall clock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from tests.support.clocks import ManualClock

from kms_operator.keys.service import KeyService
from kms_operator.operator.scheduling import Backoff, DeadlineScheduler
from kms_operator.store.records import KeyRecord, KeyState

pytestmark = pytest.mark.unit


class FakeObjects:
    """The cluster side of the scheduler: records Events, holds no objects."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def get_cmk(self, namespace: str, name: str) -> None:
        return None

    def post_event_on(
        self, kind: str, namespace: str, name: str, uid: str | None, **kw: Any
    ) -> None:
        self.events.append((name, kw["reason"]))


class Flaky:
    """Wraps one method of the service: raises ``error`` the first ``times`` calls."""

    def __init__(self, real: Callable[..., Any], error: BaseException, times: int) -> None:
        self.real, self.error, self.left, self.calls = real, error, times, 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        if self.left > 0:
            self.left -= 1
            raise self.error
        return self.real(*args)


async def _until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _due_key(service: KeyService, clock: ManualClock) -> KeyRecord:
    key = service.create_key("ns", "doomed", namespace_uid="ns-1", object_uid="obj-1")
    service.schedule_deletion(key.key_id, 7)
    clock.advance(timedelta(days=7, seconds=1))
    return key


def _scheduler(
    service: KeyService, objects: FakeObjects, slept: list[tuple[float, str | None]]
) -> DeadlineScheduler:
    scheduler: DeadlineScheduler

    async def sleep(seconds: float) -> None:
        slept.append((seconds, scheduler.problem()))
        await asyncio.sleep(0)

    scheduler = DeadlineScheduler(
        service,
        objects,  # type: ignore[arg-type]
        coalesce=0,
        max_sleep=3600,
        backoff=Backoff(first=2, cap=5, sleep=sleep),
    )
    return scheduler


@pytest.mark.parametrize(
    "error",
    [sqlite3.OperationalError("database or disk is full"), RuntimeError("a bug"), KeyError("x")],
    ids=["disk-full", "runtime-error", "key-error"],
)
def test_a_failing_destroy_is_retried_with_backoff_and_reported(
    service: KeyService,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
) -> None:
    key = _due_key(service, clock)
    flaky = Flaky(service.run_due, error, times=3)
    monkeypatch.setattr(service, "run_due", flaky)
    objects, slept = FakeObjects(), []  # type: ignore[var-annotated]
    scheduler = _scheduler(service, objects, slept)

    async def scenario() -> None:
        task = asyncio.create_task(scheduler.run())
        try:
            await _until(
                lambda: service.get(key.key_id).state is KeyState.DESTROYED,
                "the key destroyed once the store works again",
            )
            await _until(lambda: scheduler.problem() is None, "problem() cleared")
            assert not task.done()  # the loop is still alive
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert flaky.calls == 4
    # Exponential, capped; problem() named the failure while backing off.
    assert [seconds for seconds, _ in slept] == [2, 4, 5]
    for failures, (_, problem) in enumerate(slept, start=1):
        assert problem is not None
        assert f"failed {failures} time(s)" in problem and type(error).__name__ in problem
    assert ("doomed", "Destroyed") in objects.events


def test_a_failing_scan_of_the_keys_is_survived(
    service: KeyService, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = _due_key(service, clock)
    flaky = Flaky(service.keys, sqlite3.OperationalError("disk I/O error"), times=1)
    monkeypatch.setattr(service, "keys", flaky)
    objects, slept = FakeObjects(), []  # type: ignore[var-annotated]
    scheduler = _scheduler(service, objects, slept)

    async def scenario() -> None:
        task = asyncio.create_task(scheduler.run())
        try:
            await _until(
                lambda: service.get(key.key_id).state is KeyState.DESTROYED, "the destruction"
            )
            await _until(lambda: scheduler.problem() is None, "problem() cleared")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    # problem() as seen during the back-off, then cleared by the scan that worked.
    ((seconds, problem),) = slept
    assert seconds == 2
    assert problem is not None and "OperationalError" in problem


def test_backoff_delays() -> None:
    backoff = Backoff(first=0.5, cap=8)
    assert [backoff.delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 8, 8]
    assert backoff.delay(10_000) == 8  # no overflow


def test_a_detached_key_is_destroyed_without_touching_the_new_object(
    service: KeyService, clock: ManualClock
) -> None:
    """The object of that name in a re-created namespace is someone else's: no status patch,
    no finalizer removed; the Event names the key."""
    key = _due_key(service, clock)
    service.observe_namespace("ns", "ns-2")  # the namespace was deleted and created again
    assert service.get(key.key_id).is_detached

    class NewTenant(FakeObjects):
        def __init__(self) -> None:
            super().__init__()
            self.patched: list[str] = []

        def get_cmk(self, namespace: str, name: str) -> dict[str, Any]:  # type: ignore[override]
            return {
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": "new-tenant",
                    "deletionTimestamp": "2026-01-01T00:00:00Z",
                    "finalizers": ["kms.cmk.dev/scheduled-deletion"],
                    "resourceVersion": "1",
                }
            }

        def patch_cmk_status(self, *args: Any) -> None:
            self.patched.append("status")

        def remove_finalizer(self, *args: Any) -> bool:
            self.patched.append("finalizer")
            return True

        def post_event_on(
            self, kind: str, namespace: str, name: str, uid: str | None, **kw: Any
        ) -> None:
            assert uid is None
            assert str(key.key_id) in kw["message"]
            super().post_event_on(kind, namespace, name, uid, **kw)

    objects = NewTenant()
    scheduler = _scheduler(service, objects, [])

    async def scenario() -> None:
        task = asyncio.create_task(scheduler.run())
        try:
            await _until(
                lambda: service.get(key.key_id).state is KeyState.DESTROYED, "the destruction"
            )
            await _until(lambda: bool(objects.events), "the Event")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert objects.patched == []

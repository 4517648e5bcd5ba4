"""The CustomerMasterKey deletion handler and binding, over a fake cluster (issue 8, items 1, 17).

Item 17: the handler used to log and swallow every exception (the next try waited for Kopf's
re-list) and ``_recreate`` gave up silently after 10 s of ``time.sleep``. Now each failure is a
log line, a Warning Event ``DeletionFailed`` and ``Synced=False``, and is retried after an
exponential, capped delay (the sleep is injected: nothing waits on the wall clock).

Item 1: a default key in a namespace being deleted is scheduled like any other key; objects
the operator recreates carry ``kms.cmk.dev/key-id`` and bind to the same key; an object of the
same name in a re-created namespace gets a new key and the old one is reported detached.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from tests.support.clocks import ManualClock
from tests.support.cluster import NS, FakeObjects, make_runtime

from kms_operator.contract import KEY_ID_ANNOTATION
from kms_operator.contract import SCHEDULED_DELETION_FINALIZER as FINALIZER
from kms_operator.keys.service import KeyService
from kms_operator.kube.objects import NamespaceInfo
from kms_operator.operator import conditions
from kms_operator.operator.customermasterkeys import deletion
from kms_operator.operator.customermasterkeys.binding import (
    KEY_BOUND_ELSEWHERE,
    KEY_CLAIM_REFUSED,
    KEY_MISSING_FROM_STORE,
    bind_or_create,
)
from kms_operator.operator.customermasterkeys.deleting import handle_deletion
from kms_operator.operator.customermasterkeys.drift import (
    KEY_WITHOUT_OBJECT,
    report_keys_without_objects,
)
from kms_operator.operator.customermasterkeys.specs import CustomerMasterKeySpec
from kms_operator.operator.runtime import Runtime
from kms_operator.operator.scheduling import Backoff
from kms_operator.store.records import KeyState

pytestmark = pytest.mark.unit

DEFAULT = {"kms.cmk.dev/default": "true"}


@pytest.fixture
def objects() -> FakeObjects:
    return FakeObjects()


@pytest.fixture
def slept() -> list[float]:
    return []


@pytest.fixture
def runtime(service: KeyService, objects: FakeObjects, slept: list[float]) -> Runtime:
    return make_runtime(service, objects, slept)


def _bound(runtime: Runtime, objects: FakeObjects, name: str, **spec: Any) -> uuid.UUID:
    """An object and its key, as the create handler leaves them."""
    labels = spec.pop("labels", {})
    body = objects.add(name, spec, labels=labels)
    parsed = CustomerMasterKeySpec.parse(spec)
    default = "datakeys" if labels else None
    binding = bind_or_create(runtime.service, body, objects.namespaces[NS], parsed, default)
    assert binding.created and binding.record is not None
    body["status"]["keyId"] = str(binding.record.key_id)
    return binding.record.key_id


def _delete(runtime: Runtime, objects: FakeObjects, name: str) -> None:
    asyncio.run(handle_deletion(runtime, objects.delete(name)))


# -- item 17: failures are retried with back-off and surface ------------------------------


def test_a_failing_cancel_is_retried_and_surfaces(
    runtime: Runtime, objects: FakeObjects, slept: list[float]
) -> None:
    key_id = _bound(runtime, objects, "saved", pendingWindowDays=30, aliases=["alias/saved"])
    _delete(runtime, objects, "saved")
    assert runtime.service.get(key_id).state is KeyState.PENDING_DELETION
    old_uid = objects.objects[NS, "saved"]["metadata"]["uid"]

    objects.objects[NS, "saved"]["metadata"]["annotations"] = {
        "kms.cmk.dev/cancel-deletion": "true"
    }
    objects.failures["remove_finalizer"] = 3  # the API server is away for a while
    asyncio.run(handle_deletion(runtime, objects.objects[NS, "saved"]))

    failed = [e for e in objects.events if e["reason"] == deletion.DELETION_FAILED]
    assert len(failed) == 3 and all(e["type"] == "Warning" for e in failed)
    assert "503" in failed[0]["message"] and "retrying in 1 s" in failed[0]["message"]
    assert [s for s in slept if s != 0.1] == [1, 2, 4]  # exponential, capped at 4
    synced = [
        c
        for status in objects.statuses
        for c in status.get("conditions", ())
        if c["type"] == "Synced" and c["reason"] == deletion.DELETION_FAILED
    ]
    assert synced and synced[0]["status"] == "False"
    # Then it worked: recreated, Disabled, claiming the same key.
    fresh = objects.objects[NS, "saved"]
    assert fresh["metadata"]["uid"] != old_uid
    assert fresh["metadata"]["annotations"] == {KEY_ID_ANNOTATION: str(key_id)}
    assert fresh["spec"]["enabled"] is False
    assert runtime.service.get(key_id).state is KeyState.DISABLED
    rebound = bind_or_create(
        runtime.service,
        fresh,
        objects.namespaces[NS],
        CustomerMasterKeySpec.parse(fresh["spec"]),
        None,
    )
    assert rebound.record is not None and rebound.record.key_id == key_id
    assert not rebound.created and rebound.problem is None


def test_a_failing_schedule_is_retried_and_surfaces(
    runtime: Runtime, objects: FakeObjects, slept: list[float]
) -> None:
    key_id = _bound(runtime, objects, "doomed", pendingWindowDays=7)
    objects.failures["namespace_info"] = 2
    _delete(runtime, objects, "doomed")
    assert objects.reasons().count(deletion.DELETION_FAILED) == 2
    assert slept == [1, 2]
    assert runtime.service.get(key_id).state is KeyState.PENDING_DELETION
    assert objects.reasons()[-1] == deletion.DELETION_SCHEDULED
    last = objects.objects[NS, "doomed"]["status"]
    synced = next(c for c in last["conditions"] if c["type"] == "Synced")
    assert (synced["status"], synced["reason"]) == ("True", deletion.DELETION_SCHEDULED)


def test_retrying_stops_when_the_object_was_released_meanwhile(
    runtime: Runtime, objects: FakeObjects, slept: list[float]
) -> None:
    _bound(runtime, objects, "gone")
    body = objects.delete("gone")
    objects.failures["namespace_info"] = 1
    del objects.objects[NS, "gone"]  # someone stripped the finalizer by hand
    asyncio.run(handle_deletion(runtime, body))
    assert slept == [1]
    assert objects.reasons() == [deletion.DELETION_FAILED]


def test_an_object_that_does_not_go_away_is_reported_and_retried(
    runtime: Runtime, objects: FakeObjects, slept: list[float]
) -> None:
    key_id = _bound(runtime, objects, "held", pendingWindowDays=30)
    _delete(runtime, objects, "held")
    body = objects.objects[NS, "held"]
    body["metadata"]["annotations"] = {"kms.cmk.dev/cancel-deletion": "true"}
    body["metadata"]["finalizers"].append("example.com/other")
    real_sleep = runtime.backoff.sleep

    async def sleep(seconds: float) -> None:
        await real_sleep(seconds)
        if seconds == 2:  # the other controller lets go during the second back-off
            body["metadata"]["finalizers"].remove("example.com/other")
            del objects.objects[NS, "held"]

    runtime.backoff = Backoff(first=1, cap=4, sleep=sleep)
    asyncio.run(handle_deletion(runtime, body))
    failed = [e for e in objects.events if e["reason"] == deletion.DELETION_FAILED]
    assert len(failed) == 2
    assert (
        "still there" in failed[0]["message"]
        and "creating the object again" in (failed[0]["message"])
    )
    assert objects.objects[NS, "held"]["metadata"]["annotations"][KEY_ID_ANNOTATION] == str(key_id)


# -- item 1: default keys, terminating namespaces, re-created namespaces ------------------


def test_default_key_deletion_is_refused_and_the_object_recreated(
    runtime: Runtime, objects: FakeObjects
) -> None:
    key_id = _bound(
        runtime, objects, "kms-default-datakeys", aliases=["alias/kms/datakeys"], labels=DEFAULT
    )
    _delete(runtime, objects, "kms-default-datakeys")
    assert objects.reasons() == [conditions.DEFAULT_KEY_PROTECTED]
    fresh = objects.objects[NS, "kms-default-datakeys"]
    assert fresh["metadata"]["annotations"][KEY_ID_ANNOTATION] == str(key_id)
    assert fresh["metadata"]["labels"] == DEFAULT
    assert runtime.service.get(key_id).state is KeyState.ENABLED


def test_default_key_goes_with_a_terminating_namespace(
    runtime: Runtime, objects: FakeObjects, clock: ManualClock
) -> None:
    user = _bound(runtime, objects, "orders", pendingWindowDays=7)
    default = _bound(
        runtime,
        objects,
        "kms-default-datakeys",
        aliases=["alias/kms/datakeys"],
        labels=DEFAULT,
        pendingWindowDays=10,
    )
    objects.namespaces[NS] = NamespaceInfo("ns-uid-1", True)
    _delete(runtime, objects, "orders")
    _delete(runtime, objects, "kms-default-datakeys")
    for key_id, days in ((user, 7), (default, 10)):
        record = runtime.service.get(key_id)
        assert record.state is KeyState.PENDING_DELETION
        assert record.deletion_date == clock.now() + timedelta(days=days)
    scheduled = [e for e in objects.events if e["name"] == "kms-default-datakeys"]
    assert [e["reason"] for e in scheduled] == [deletion.DELETION_SCHEDULED]
    assert "being deleted" in scheduled[0]["message"]
    assert "default key goes with it" in scheduled[0]["message"]
    # Both objects are still held by the finalizer: the namespace waits for the window.
    assert objects.objects[NS, "kms-default-datakeys"]["metadata"]["finalizers"] == [FINALIZER]
    assert not [e for e in objects.events if e["reason"] == conditions.DEFAULT_KEY_PROTECTED]


def test_cancel_in_a_terminating_namespace_is_refused(
    runtime: Runtime, objects: FakeObjects
) -> None:
    key_id = _bound(runtime, objects, "late", pendingWindowDays=7)
    objects.namespaces[NS] = NamespaceInfo("ns-uid-1", True)
    body = objects.delete("late")
    body["metadata"]["annotations"] = {"kms.cmk.dev/cancel-deletion": "true"}
    asyncio.run(handle_deletion(runtime, body))
    assert runtime.service.get(key_id).state is KeyState.PENDING_DELETION
    assert deletion.NAMESPACE_TERMINATING in objects.reasons()
    assert objects.objects[NS, "late"]["metadata"]["uid"] == body["metadata"]["uid"]


def test_namespace_terminating_before_the_recreate_schedules_the_key(
    runtime: Runtime, objects: FakeObjects, clock: ManualClock
) -> None:
    key_id = _bound(
        runtime, objects, "kms-default-datakeys", aliases=["alias/kms/datakeys"], labels=DEFAULT
    )
    body = objects.delete("kms-default-datakeys")
    real_remove = objects.remove_finalizer

    def remove_then_terminate(body: dict[str, Any], finalizer: str) -> bool:
        objects.namespaces[NS] = NamespaceInfo("ns-uid-1", True)
        return real_remove(body, finalizer)

    objects.remove_finalizer = remove_then_terminate  # type: ignore[method-assign]
    asyncio.run(handle_deletion(runtime, body))
    record = runtime.service.get(key_id)
    assert record.state is KeyState.PENDING_DELETION
    assert record.deletion_date == clock.now() + timedelta(days=30)
    assert objects.reasons()[-1] == deletion.DELETION_SCHEDULED
    assert (NS, "kms-default-datakeys") not in objects.objects


def test_deleting_an_object_that_holds_no_key_leaves_the_key_alone(
    runtime: Runtime, objects: FakeObjects
) -> None:
    key_id = _bound(runtime, objects, "orders")
    # The object goes behind the operator's back; a new one of that name claims nothing.
    del objects.objects[NS, "orders"]
    intruder = objects.add("orders")
    binding = bind_or_create(
        runtime.service, intruder, objects.namespaces[NS], CustomerMasterKeySpec.parse({}), None
    )
    assert binding.record is None and binding.problem is not None
    assert binding.problem[0] == KEY_BOUND_ELSEWHERE
    _delete(runtime, objects, "orders")
    assert (NS, "orders") not in objects.objects  # released
    assert runtime.service.get(key_id).state is KeyState.ENABLED


def test_a_recreated_namespace_gets_new_keys_and_the_old_ones_are_reported(
    runtime: Runtime, objects: FakeObjects
) -> None:
    old = _bound(runtime, objects, "orders")
    del objects.objects[NS, "orders"]
    objects.namespaces[NS] = NamespaceInfo("ns-uid-2", False)  # deleted and created again
    body = objects.add("orders")
    binding = bind_or_create(
        runtime.service, body, objects.namespaces[NS], CustomerMasterKeySpec.parse({}), None
    )
    assert binding.created and binding.record is not None and binding.record.key_id != old
    assert [r.key_id for r in binding.detached] == [old]
    assert runtime.service.get(old).is_detached
    # Claiming the old key by id does not work across namespaces either.
    thief = objects.add("thief", annotations={KEY_ID_ANNOTATION: str(old)})
    refused = bind_or_create(
        runtime.service, thief, objects.namespaces[NS], CustomerMasterKeySpec.parse({}), None
    )
    assert refused.record is None and refused.problem is not None
    assert refused.problem[0] == KEY_CLAIM_REFUSED


@pytest.mark.parametrize(
    ("annotation", "reason"),
    [
        ("not-a-uuid", conditions.INVALID_SPEC),
        (str(uuid.UUID(int=0xABCDEF)).upper(), conditions.INVALID_SPEC),
        (str(uuid.UUID(int=0xABCDEF)), KEY_MISSING_FROM_STORE),
    ],
)
def test_a_bad_claim_creates_no_key(
    runtime: Runtime, objects: FakeObjects, annotation: str, reason: str
) -> None:
    body = objects.add("claims", annotations={KEY_ID_ANNOTATION: annotation})
    binding = bind_or_create(
        runtime.service, body, objects.namespaces[NS], CustomerMasterKeySpec.parse({}), None
    )
    assert binding.record is None and binding.problem is not None
    assert binding.problem[0] == reason
    assert runtime.service.find(NS, "claims") is None


def test_start_up_report_detaches_keys_of_earlier_namespaces(
    runtime: Runtime, objects: FakeObjects
) -> None:
    old = _bound(runtime, objects, "orders")
    gone = _bound(runtime, objects, "other")
    runtime.service.create_key("vanished", "k", namespace_uid="v-1", object_uid="o-9")
    objects.namespaces[NS] = NamespaceInfo("ns-uid-2", False)  # re-created meanwhile
    del objects.objects[NS, "other"]
    assert report_keys_without_objects(runtime) == 3
    assert runtime.service.get(old).is_detached and runtime.service.get(gone).is_detached
    reported = [e for e in objects.events if e["reason"] == KEY_WITHOUT_OBJECT]
    assert {e["name"] for e in reported} == {"orders", "other", "k"}
    assert all("detached" in e["message"] for e in reported)

"""The CustomerMasterKey handlers' translation, without a cluster (issue 9, items 2 and 3).

Each Kopf handler is called as Kopf calls it: a ``kopf.Body`` built from a dict, a
``kopf.Patch`` it fills, a memo holding a Runtime over a real KeyService (an SQLite file in
``tmp_path``, a manual clock) and a fake cluster that records Events and status patches. The
tests check what the handlers write and post: the status, the conditions, the Events, and the
retries Kopf is asked for.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import kopf
import pytest
from tests.support.clocks import ManualClock
from tests.support.cluster import NS, FakeObjects, Wakes, make_runtime

from kms_operator.contract import (
    KEY_ID_ANNOTATION,
    ROTATE_ANNOTATION,
    SCHEDULED_DELETION_FINALIZER,
)
from kms_operator.errors import InvalidRequest, StoreError
from kms_operator.keys.service import KeyService
from kms_operator.operator import customermasterkeys
from kms_operator.operator.customermasterkeys import admission, handlers
from kms_operator.operator.runtime import Runtime
from kms_operator.operator.scheduling import Backoff, DeadlineScheduler
from kms_operator.store.records import KeyState
from kms_operator.timestamps import rfc3339

pytestmark = pytest.mark.unit

DEFAULT = {"kms.cmk.dev/default": "true"}


@pytest.fixture
def objects() -> FakeObjects:
    return FakeObjects()


@pytest.fixture
def runtime(service: KeyService, objects: FakeObjects) -> Runtime:
    return make_runtime(service, objects)


def _memo(runtime: Runtime) -> kopf.Memo:
    return kopf.Memo(runtime=runtime)


def _kept(objects: FakeObjects, body: dict[str, Any], patch: kopf.Patch) -> None:
    """What the API server does with the handler's patch: the object keeps it."""
    stored = objects.objects[body["metadata"]["namespace"], body["metadata"]["name"]]
    stored["status"].update(patch.get("status") or {})
    stored["metadata"].update(patch.get("metadata") or {})


def _create(runtime: Runtime, objects: FakeObjects, body: dict[str, Any]) -> kopf.Patch:
    patch = kopf.Patch()
    asyncio.run(handlers.reconcile(body=kopf.Body(body), patch=patch, memo=_memo(runtime)))
    _kept(objects, body, patch)
    return patch


def _update(
    runtime: Runtime, objects: FakeObjects, name: str, change: Callable[[dict[str, Any]], None]
) -> kopf.Patch:
    old = objects.objects[NS, name]
    new = {**old, "metadata": dict(old["metadata"]), "spec": dict(old["spec"])}
    new["metadata"]["annotations"] = dict(old["metadata"].get("annotations") or {})
    change(new)
    objects.objects[NS, name] = new
    patch = kopf.Patch()
    asyncio.run(
        handlers.update(body=kopf.Body(new), old=old, new=new, patch=patch, memo=_memo(runtime))
    )
    _kept(objects, new, patch)
    return patch


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def _events(objects: FakeObjects, name: str) -> list[tuple[str, str]]:
    return [(e["type"], e["reason"]) for e in objects.events if e["name"] == name]


def _wakes(runtime: Runtime) -> int:
    scheduler = runtime.scheduler
    assert isinstance(scheduler, Wakes)
    return scheduler.count


# -- create, update, resume ------------------------------------------------------------------


def test_create_binds_a_new_key_applies_the_spec_and_reports_it(
    runtime: Runtime, objects: FakeObjects, clock: ManualClock
) -> None:
    body = objects.add(
        "orders",
        {"description": "orders", "aliases": ["alias/orders"], "rotation": {"periodDays": 90}},
        finalizers=[],
    )

    patch = _create(runtime, objects, body)

    record = runtime.service.find(NS, "orders")
    assert record is not None
    assert (record.description, record.aliases, record.rotation_period_days) == (
        "orders",
        ("alias/orders",),
        90,
    )
    assert record.object_uid == body["metadata"]["uid"] and record.namespace_uid == "ns-uid-1"
    assert patch["metadata"]["finalizers"] == [SCHEDULED_DELETION_FINALIZER]
    status = patch["status"]
    assert status["keyId"] == str(record.key_id)
    assert (status["state"], status["alias"], status["currentVersion"]) == (
        "Enabled",
        "alias/orders",
        1,
    )
    assert status["rotation"]["nextRotationAt"] == rfc3339(clock.now() + timedelta(days=90))
    assert status["observedGeneration"] == 1
    shown = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert shown == {
        "Ready": ("True", "Enabled"),
        "InStore": ("True", "Found"),
        "Synced": ("True", "Applied"),
        "AliasConflict": ("False", "NoConflict"),
    }
    assert objects.events == [
        {
            "name": "orders",
            "uid": body["metadata"]["uid"],
            "type": "Normal",
            "reason": "Created",
            "message": f"created key {record.key_id}",
        }
    ]
    assert _wakes(runtime) == 1


def test_resuming_a_bound_object_changes_nothing_and_posts_nothing(
    runtime: Runtime, objects: FakeObjects
) -> None:
    body = objects.add("orders", {"aliases": ["alias/orders"]})
    _create(runtime, objects, body)
    record = runtime.service.find(NS, "orders")
    assert record is not None
    objects.events.clear()

    patch = _create(runtime, objects, objects.objects[NS, "orders"])

    assert runtime.service.find(NS, "orders") is record  # no write: the same record
    assert patch["status"]["keyId"] == str(record.key_id)
    assert "metadata" not in patch  # the finalizer is there already
    assert objects.events == []


def test_refused_fields_are_synced_false_with_a_warning_each_and_the_rest_applies(
    runtime: Runtime, objects: FakeObjects
) -> None:
    body = objects.add("kms-default-datakeys", {"aliases": ["alias/kms/datakeys"]}, labels=DEFAULT)
    _create(runtime, objects, body)
    objects.events.clear()

    def disable_and_describe(new: dict[str, Any]) -> None:
        new["spec"].update(enabled=False, description="the default key", aliases=[])

    status = _update(runtime, objects, "kms-default-datakeys", disable_and_describe)["status"]

    synced = _condition(status, "Synced")
    assert (synced["status"], synced["reason"]) == ("False", "DefaultKeyProtected")
    assert "cannot be disabled" in synced["message"] and "alias" in synced["message"]
    assert _condition(status, "Ready")["status"] == "True"
    assert status["state"] == "Enabled" and status["alias"] == "alias/kms/datakeys"
    assert _events(objects, "kms-default-datakeys") == [
        ("Warning", "DefaultKeyProtected"),
        ("Warning", "DefaultKeyProtected"),
    ]
    record = runtime.service.find(NS, "kms-default-datakeys")
    assert record is not None and record.description == "the default key" and record.enabled


def test_a_reserved_alias_on_a_user_key_is_an_invalid_spec(
    runtime: Runtime, objects: FakeObjects
) -> None:
    body = objects.add("sneaky", {"aliases": ["alias/kms/datakeys"]})

    status = _create(runtime, objects, body)["status"]

    synced = _condition(status, "Synced")
    assert (synced["status"], synced["reason"]) == ("False", "InvalidSpec")
    assert "reserved" in synced["message"]
    assert status["state"] == "Enabled" and status["alias"] is None
    assert _events(objects, "sneaky") == [("Normal", "Created"), ("Warning", "InvalidSpec")]


def test_an_alias_conflict_shows_on_both_keys(runtime: Runtime, objects: FakeObjects) -> None:
    _create(runtime, objects, objects.add("first", {"aliases": ["alias/shared"]}))
    second = objects.add("second", {"aliases": ["alias/shared", "alias/own"]})

    status = _create(runtime, objects, second)["status"]

    conflict = _condition(status, "AliasConflict")
    assert conflict["status"] == "True" and "first" in conflict["message"]
    assert _condition(status, "Synced")["reason"] == "AliasConflict"
    on_first = _condition(objects.objects[NS, "first"]["status"], "AliasConflict")
    assert on_first["status"] == "True" and "second" in on_first["message"]
    assert objects.objects[NS, "first"]["status"]["alias"] == "alias/shared"  # the holder keeps it

    status = _update(
        runtime, objects, "second", lambda new: new["spec"].update(aliases=["alias/own"])
    )["status"]
    assert _condition(status, "AliasConflict")["status"] == "False"
    assert _condition(status, "Synced")["status"] == "True" and status["alias"] == "alias/own"
    assert _condition(objects.objects[NS, "first"]["status"], "AliasConflict")["status"] == "False"


def test_a_rotation_on_demand_only_when_the_annotation_changes(
    runtime: Runtime, objects: FakeObjects
) -> None:
    _create(runtime, objects, objects.add("rotating"))

    def annotate(value: str) -> Callable[[dict[str, Any]], None]:
        return lambda new: new["metadata"]["annotations"].update({ROTATE_ANNOTATION: value})

    assert _update(runtime, objects, "rotating", annotate("1"))["status"]["currentVersion"] == 2
    assert _update(runtime, objects, "rotating", annotate("1"))["status"]["currentVersion"] == 2
    assert _update(runtime, objects, "rotating", annotate("2"))["status"]["currentVersion"] == 3
    rotated = [e for e in objects.events if e["reason"] == "Rotated"]
    assert [e["message"] for e in rotated] == [
        "rotated on demand to version 2",
        "rotated on demand to version 3",
    ]


def test_a_default_key_refuses_a_rotation_on_demand(runtime: Runtime, objects: FakeObjects) -> None:
    body = objects.add("kms-default-datakeys", {"aliases": ["alias/kms/datakeys"]}, labels=DEFAULT)
    _create(runtime, objects, body)

    status = _update(
        runtime,
        objects,
        "kms-default-datakeys",
        lambda new: new["metadata"]["annotations"].update({ROTATE_ANNOTATION: "now"}),
    )["status"]

    assert status["currentVersion"] == 1
    synced = _condition(status, "Synced")
    assert synced["reason"] == "DefaultKeyProtected" and "rotated on demand" in synced["message"]
    assert "Rotated" not in objects.reasons()


# -- objects that hold no key ------------------------------------------------------------


def test_an_object_of_an_earlier_objects_name_gets_no_key_until_it_claims_one(
    runtime: Runtime, objects: FakeObjects
) -> None:
    _create(runtime, objects, objects.add("kept"))
    key = runtime.service.find(NS, "kept")
    assert key is not None
    del objects.objects[NS, "kept"]  # gone behind the operator's back
    objects.events.clear()
    wakes = _wakes(runtime)

    patch = _create(runtime, objects, objects.add("kept"))

    status = patch["status"]
    assert "keyId" not in status
    ready = _condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "KeyBoundElsewhere")
    assert str(key.key_id) in ready["message"]
    assert _events(objects, "kept") == [("Warning", "KeyBoundElsewhere")]
    assert len(runtime.service.keys()) == 1 and _wakes(runtime) == wakes

    claimed = _update(
        runtime,
        objects,
        "kept",
        lambda new: new["metadata"]["annotations"].update({KEY_ID_ANNOTATION: str(key.key_id)}),
    )["status"]
    assert claimed["keyId"] == str(key.key_id) and claimed["state"] == "Enabled"


def test_a_claim_of_a_key_missing_from_the_store_says_so(
    runtime: Runtime, objects: FakeObjects
) -> None:
    missing = uuid.uuid4()
    body = objects.add("orphan", annotations={KEY_ID_ANNOTATION: str(missing)})

    status = _create(runtime, objects, body)["status"]

    for type_ in ("Ready", "InStore"):
        condition = _condition(status, type_)
        assert (condition["status"], condition["reason"]) == ("False", "KeyMissingFromStore")
        assert str(missing) in condition["message"]
    assert runtime.service.find(NS, "orphan") is None


def test_a_terminating_object_is_left_to_the_deletion_handler(
    runtime: Runtime, objects: FakeObjects
) -> None:
    objects.add("going")
    body = objects.delete("going")

    patch = _create(runtime, objects, body)

    assert dict(patch) == {} and objects.events == []
    assert runtime.service.keys() == []


# -- what Kopf is asked to retry ---------------------------------------------------------


def test_a_namespace_that_cannot_be_read_is_retried(runtime: Runtime, objects: FakeObjects) -> None:
    body = objects.add("orders")
    del objects.namespaces[NS]

    with pytest.raises(kopf.TemporaryError, match=f"namespace {NS} not found"):
        _create(runtime, objects, body)


def test_a_store_failure_is_retried_and_a_refused_creation_is_permanent(
    runtime: Runtime, objects: FakeObjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: Any, **kwargs: Any) -> None:
        raise StoreError("the disk is full")

    monkeypatch.setattr(runtime.service, "apply_spec", full)
    with pytest.raises(kopf.TemporaryError, match="the disk is full") as retried:
        _create(runtime, objects, objects.add("orders"))
    assert retried.value.delay == 10

    def refused(*args: Any, **kwargs: Any) -> None:
        raise InvalidRequest("refused", field="origin")

    monkeypatch.setattr(runtime.service, "create_key", refused)
    with pytest.raises(kopf.PermanentError, match="refused"):
        _create(runtime, objects, objects.add("other"))


# -- deletion, admission, timers -----------------------------------------------------------


def test_the_deletion_handler_schedules_the_key_of_a_terminating_object(
    runtime: Runtime, objects: FakeObjects, clock: ManualClock
) -> None:
    _create(runtime, objects, objects.add("doomed", {"pendingWindowDays": 7}))
    body = objects.delete("doomed")

    asyncio.run(handlers.deletion(body=kopf.Body(body), memo=_memo(runtime)))

    record = runtime.service.find(NS, "doomed")
    assert record is not None and record.state is KeyState.PENDING_DELETION
    assert record.deletion_date == clock.now() + timedelta(days=7)
    status = objects.objects[NS, "doomed"]["status"]
    assert status["state"] == "PendingDeletion"
    assert _condition(status, "Synced")["reason"] == "DeletionScheduled"
    assert _events(objects, "doomed")[-1] == ("Warning", "DeletionScheduled")
    assert objects.objects[NS, "doomed"]["metadata"]["finalizers"] == [SCHEDULED_DELETION_FINALIZER]


def test_the_deletion_handler_leaves_objects_it_does_not_hold(
    runtime: Runtime, objects: FakeObjects
) -> None:
    _create(runtime, objects, objects.add("free"))
    body = objects.delete("free")
    body["metadata"]["finalizers"] = ["example.com/other"]

    asyncio.run(handlers.deletion(body=kopf.Body(body), memo=_memo(runtime)))

    record = runtime.service.find(NS, "free")
    assert record is not None and record.state is KeyState.ENABLED


def _validate(runtime: Runtime, operation: str, old: Any, new: Any) -> None:
    admission.validate(old=old, new=new, namespace=NS, operation=operation, memo=_memo(runtime))


def test_admission_refuses_an_alias_the_store_gives_another_key(
    runtime: Runtime, objects: FakeObjects
) -> None:
    _create(runtime, objects, objects.add("holder", {"aliases": ["alias/taken"]}))
    grabber = {"metadata": {"name": "grabber"}, "spec": {"aliases": ["alias/taken"]}}

    with pytest.raises(kopf.AdmissionError, match="holder") as refused:
        _validate(runtime, "CREATE", None, grabber)
    assert refused.value.code == 422
    _validate(
        runtime, "CREATE", None, {"metadata": {"name": "n"}, "spec": {"aliases": ["alias/free"]}}
    )


def test_admission_admits_when_its_own_check_fails(runtime: Runtime, objects: FakeObjects) -> None:
    """A fault of the operator must not block every write: the reconciliation still refuses."""
    default = {"metadata": {"name": "kms-default-datakeys", "labels": DEFAULT}, "spec": {}}
    with pytest.raises(kopf.AdmissionError, match="cannot be deleted"):
        _validate(runtime, "DELETE", default, None)
    objects.failures["namespace_info"] = 1
    _validate(runtime, "DELETE", default, None)


def test_a_scheduled_rotation_shows_on_the_object(
    service: KeyService, runtime: Runtime, objects: FakeObjects, clock: ManualClock
) -> None:
    _create(runtime, objects, objects.add("rotating", {"rotation": {"periodDays": 90}}))
    clock.advance(timedelta(days=90))
    scheduler = DeadlineScheduler(
        service,
        objects,  # type: ignore[arg-type]
        coalesce=0,
        max_sleep=3600,
        backoff=Backoff(sleep=_no_sleep),
    )

    async def scenario() -> None:
        task = asyncio.create_task(scheduler.run())
        try:
            for _ in range(1000):
                if "Rotated" in objects.reasons():
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    status = objects.objects[NS, "rotating"]["status"]
    assert status["currentVersion"] == 2
    assert status["rotation"]["lastRotatedAt"] == rfc3339(clock.now())
    (event,) = [e for e in objects.events if e["reason"] == "Rotated"]
    assert event["type"] == "Normal" and event["message"] == "rotated on its schedule"
    assert event["uid"] == objects.objects[NS, "rotating"]["metadata"]["uid"]


async def _no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


def test_every_event_of_the_kind_goes_through_post_notices() -> None:
    """The one rule for Events (operator/outcomes.py): no kopf.event, kopf.warn or direct
    poster in the kind's modules."""
    package = Path(customermasterkeys.__file__).parent
    for module in package.glob("*.py"):
        source = module.read_text(encoding="utf-8")
        for forbidden in ("kopf.event(", "kopf.warn(", "kopf.info(", ".post_event("):
            assert forbidden not in source, f"{module.name} calls {forbidden}"

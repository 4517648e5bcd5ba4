"""CustomerMasterKey through the Kubernetes API only, against the real operator process.

The operator runs with a short day (``--day-seconds``, 2 s by default), so a 7-day pending
window lasts 14 s and deletions really complete during the test.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import pytest
from kubernetes import client
from tests.integration.operator_fixtures import Cmks, OperatorProcess, wait_for

from kms_operator.keys.service import KeyService
from kms_operator.store.backups import restore_store
from kms_operator.store.rootkey import load_root_key_file
from kms_operator.store.sqlite import SqliteKeyStore


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or () if c["type"] == kind), {})


def _events(kube_api: client.ApiClient, namespace: str, name: str) -> list[Any]:
    items = client.CoreV1Api(kube_api).list_namespaced_event(namespace).items
    return [e for e in items if e.involved_object.name == name]


def _event_reasons(kube_api: client.ApiClient, namespace: str, name: str) -> set[str]:
    return {e.reason for e in _events(kube_api, namespace, name)}


def _store_view(operator: OperatorProcess) -> KeyService:
    """A read of the real store file, as the operator left it (the operator must be stopped)."""
    store = SqliteKeyStore(operator.store_path, load_root_key_file(operator.root_key_file))
    return KeyService(store)


def test_create_sets_status_condition_and_event(
    operator_process: OperatorProcess, cmks: Cmks, namespace: str, kube_api: client.ApiClient
) -> None:
    cmks.create(namespace, "orders", {"aliases": ["alias/orders"], "description": "orders"})
    status = cmks.wait_state(namespace, "orders", "Enabled")
    assert status["keyId"]
    assert status["currentVersion"] == 1
    assert [v["version"] for v in status["versions"]] == [1]
    assert status["alias"] == "alias/orders"
    assert status["origin"] == "KMS"
    assert status["observedGeneration"] == 1
    ready = _condition(status, "Ready")
    assert ready["status"] == "True" and ready["reason"] == "Enabled"
    wait_for(lambda: "Created" in _event_reasons(kube_api, namespace, "orders"), what="event")
    body = cmks.get(namespace, "orders")
    assert body is not None
    assert "kms.cmk.dev/scheduled-deletion" in body["metadata"]["finalizers"]
    # Kopf's bookkeeping stays under our prefix, never Kopf's default one.
    assert not any("zalando" in k for k in body["metadata"].get("annotations", {}))


def test_enable_and_disable(operator_process: OperatorProcess, cmks: Cmks, namespace: str) -> None:
    cmks.create(namespace, "toggle")
    key_id = cmks.wait_state(namespace, "toggle", "Enabled")["keyId"]
    cmks.patch(namespace, "toggle", {"spec": {"enabled": False}})
    status = cmks.wait_state(namespace, "toggle", "Disabled")
    assert status["keyId"] == key_id
    assert _condition(status, "Ready")["status"] == "False"
    cmks.patch(namespace, "toggle", {"spec": {"enabled": True}})
    assert cmks.wait_state(namespace, "toggle", "Enabled")["keyId"] == key_id


def test_alias_conflict_is_reported_on_both_keys(
    operator_process: OperatorProcess, cmks: Cmks, namespace: str
) -> None:
    cmks.create(namespace, "first", {"aliases": ["alias/shared"]})
    cmks.wait_state(namespace, "first", "Enabled")
    cmks.create(namespace, "second", {"aliases": ["alias/shared", "alias/own"]})
    second = cmks.wait_status(
        namespace, "second", lambda s: _condition(s, "AliasConflict").get("status") == "True"
    )
    assert "first" in _condition(second, "AliasConflict")["message"]
    assert _condition(second, "Synced")["status"] == "False"
    first = cmks.wait_status(
        namespace, "first", lambda s: _condition(s, "AliasConflict").get("status") == "True"
    )
    assert "second" in _condition(first, "AliasConflict")["message"]
    assert first["alias"] == "alias/shared"  # the holder keeps its alias

    cmks.patch(namespace, "second", {"spec": {"aliases": ["alias/own"]}})
    cmks.wait_status(
        namespace, "second", lambda s: _condition(s, "AliasConflict").get("status") == "False"
    )
    cmks.wait_status(
        namespace, "first", lambda s: _condition(s, "AliasConflict").get("status") == "False"
    )


def test_on_demand_rotation_by_annotation(
    operator_process: OperatorProcess, cmks: Cmks, namespace: str, kube_api: client.ApiClient
) -> None:
    cmks.create(namespace, "rotating")
    cmks.wait_state(namespace, "rotating", "Enabled")
    for expected, value in ((2, "first"), (3, "second")):
        cmks.patch(
            namespace, "rotating", {"metadata": {"annotations": {"kms.cmk.dev/rotate": value}}}
        )
        status = cmks.wait_status(
            namespace, "rotating", lambda s, n=expected: s["currentVersion"] == n
        )
        assert [v["version"] for v in status["versions"]] == list(range(1, expected + 1))
        assert all(v["state"] == "Enabled" for v in status["versions"])
    wait_for(lambda: "Rotated" in _event_reasons(kube_api, namespace, "rotating"), what="event")


def test_deletion_completes_after_the_pending_window(
    operator_process: OperatorProcess, cmks: Cmks, namespace: str, kube_api: client.ApiClient
) -> None:
    cmks.create(namespace, "doomed", {"pendingWindowDays": 7})
    cmks.wait_state(namespace, "doomed", "Enabled")
    requested = time.time()
    cmks.delete(namespace, "doomed")
    status = cmks.wait_state(namespace, "doomed", "PendingDeletion")
    deletion = datetime.fromisoformat(status["deletionDate"].replace("Z", "+00:00")).timestamp()
    window = 7 * operator_process.day_seconds
    assert window - 2 <= deletion - requested <= window + 2
    body = cmks.get(namespace, "doomed")
    assert body is not None and body["metadata"]["deletionTimestamp"]
    wait_for(
        lambda: cmks.get(namespace, "doomed") is None,
        timeout=window + 20,
        what="the object released after destruction",
    )
    assert time.time() >= deletion - 1  # never before the date
    assert {"DeletionScheduled", "Destroyed"} <= _event_reasons(kube_api, namespace, "doomed")


def test_cancel_deletion_recreates_the_object_disabled_with_the_same_key(
    operator_process: OperatorProcess, cmks: Cmks, namespace: str
) -> None:
    cmks.create(namespace, "saved", {"aliases": ["alias/saved"], "pendingWindowDays": 30})
    cmks.wait_state(namespace, "saved", "Enabled")
    cmks.patch(namespace, "saved", {"metadata": {"annotations": {"kms.cmk.dev/rotate": "x"}}})
    before = cmks.wait_status(namespace, "saved", lambda s: s["currentVersion"] == 2)
    old_uid = cmks.get(namespace, "saved")["metadata"]["uid"]  # type: ignore[index]
    cmks.delete(namespace, "saved")
    cmks.wait_state(namespace, "saved", "PendingDeletion")
    cmks.patch(
        namespace, "saved", {"metadata": {"annotations": {"kms.cmk.dev/cancel-deletion": "true"}}}
    )

    def recreated() -> dict[str, Any] | None:
        body = cmks.get(namespace, "saved")
        if body and body["metadata"]["uid"] != old_uid and (body.get("status") or {}).get("state"):
            return body
        return None

    body = wait_for(recreated, timeout=30, what="the recreated object")
    status = body["status"]
    assert status["state"] == "Disabled"
    assert status["keyId"] == before["keyId"]
    assert status["versions"] == before["versions"]
    assert body["spec"]["enabled"] is False
    assert body["spec"]["aliases"] == ["alias/saved"]
    assert "kms.cmk.dev/cancel-deletion" not in body["metadata"].get("annotations", {})
    # The new object claims its key by id (issue 8, item 1): a name alone binds nothing.
    assert body["metadata"]["annotations"]["kms.cmk.dev/key-id"] == before["keyId"]
    assert not body["metadata"].get("deletionTimestamp")
    cmks.patch(namespace, "saved", {"spec": {"enabled": True}})
    assert cmks.wait_state(namespace, "saved", "Enabled")["keyId"] == before["keyId"]


def test_default_key_cannot_be_disabled_or_deleted(
    operator_process: OperatorProcess, cmks: Cmks, namespace: str, kube_api: client.ApiClient
) -> None:
    cmks.create(
        namespace,
        "kms-default-datakeys",
        {"aliases": ["alias/kms/datakeys"]},
        labels={"kms.cmk.dev/default": "true"},
    )
    status = cmks.wait_state(namespace, "kms-default-datakeys", "Enabled")
    assert status["default"] is True
    key_id = status["keyId"]

    cmks.patch(namespace, "kms-default-datakeys", {"spec": {"enabled": False}})
    refused = cmks.wait_status(
        namespace,
        "kms-default-datakeys",
        lambda s: _condition(s, "Synced").get("reason") == "DefaultKeyProtected",
    )
    assert refused["state"] == "Enabled"
    assert _condition(refused, "Synced")["status"] == "False"

    old_uid = cmks.get(namespace, "kms-default-datakeys")["metadata"]["uid"]  # type: ignore[index]
    cmks.delete(namespace, "kms-default-datakeys")
    body = wait_for(
        lambda: (
            (b := cmks.get(namespace, "kms-default-datakeys"))
            and b["metadata"]["uid"] != old_uid
            and (b.get("status") or {}).get("state")
            and b
        ),
        what="the default key's object recreated",
    )
    assert body["status"]["state"] == "Enabled"
    assert body["status"]["keyId"] == key_id
    assert body["metadata"]["annotations"]["kms.cmk.dev/key-id"] == key_id
    assert "DefaultKeyProtected" in _event_reasons(kube_api, namespace, "kms-default-datakeys")


def test_reserved_alias_refused_for_a_user_key(
    operator_process: OperatorProcess, cmks: Cmks, namespace: str
) -> None:
    cmks.create(namespace, "sneaky", {"aliases": ["alias/kms/datakeys"]})
    status = cmks.wait_status(
        namespace, "sneaky", lambda s: _condition(s, "Synced").get("status") == "False"
    )
    assert "reserved" in _condition(status, "Synced")["message"]
    assert status["state"] == "Enabled" and status.get("alias") is None


def test_kubectl_get_shows_the_printer_columns(
    operator_process: OperatorProcess, cmks: Cmks, namespace: str
) -> None:
    cmks.create(namespace, "listed", {"aliases": ["alias/listed"]})
    cmks.wait_state(namespace, "listed", "Enabled")
    plane = operator_process.plane
    kubectl = [str(plane.kubectl_path), "--kubeconfig", str(plane.kubeconfig), "-n", namespace]
    out = subprocess.run(
        [*kubectl, "get", "cmk"], check=True, capture_output=True, text=True
    ).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "STATE", "ORIGIN", "ALIAS", "VERSION", "DELETION", "AGE"]
    assert row.split()[:5] == ["listed", "Enabled", "KMS", "alias/listed", "1"]
    everything = subprocess.run(
        [*kubectl, "get", "kms"], check=True, capture_output=True, text=True
    ).stdout
    assert "customermasterkey.kms.cmk.dev/listed" in everything


def test_restart_during_pending_deletion_keeps_the_date(
    operator_process: OperatorProcess, cmks: Cmks, namespace: str
) -> None:
    cmks.create(namespace, "patient", {"pendingWindowDays": 10})
    cmks.wait_state(namespace, "patient", "Enabled")
    cmks.delete(namespace, "patient")
    date = cmks.wait_state(namespace, "patient", "PendingDeletion")["deletionDate"]
    operator_process.kill()
    time.sleep(operator_process.day_seconds)  # a "day" passes while the operator is down
    operator_process.start()
    # The resumed operator re-reads the date from the store: it neither moves nor restarts it.
    for _ in range(3):
        assert cmks.status(namespace, "patient")["deletionDate"] == date
        time.sleep(0.5)
    deadline = datetime.fromisoformat(date.replace("Z", "+00:00")).timestamp()
    wait_for(
        lambda: cmks.get(namespace, "patient") is None,
        timeout=max(0.0, deadline - time.time()) + 20,
        what="destruction after the restart",
    )
    assert time.time() >= deadline - 1


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.1, 0.2])
def test_sigkill_during_rotation_leaves_the_key_consistent(
    operator_process: OperatorProcess, cmks: Cmks, namespace: str, delay: float
) -> None:
    cmks.create(namespace, "crashy")
    key_id = cmks.wait_state(namespace, "crashy", "Enabled")["keyId"]
    cmks.patch(namespace, "crashy", {"metadata": {"annotations": {"kms.cmk.dev/rotate": "now"}}})
    time.sleep(delay)
    operator_process.kill()
    view = _store_view(operator_process)
    record = view.find(namespace, "crashy")
    assert record is not None and str(record.key_id) == key_id
    stored = [v.version for v in record.versions]
    assert stored in ([1], [1, 2]), stored  # before or after, never between
    for version in stored:  # every version the store lists has its material
        assert view.encrypt(namespace, "crashy", b"probe").key_version == stored[-1]
        assert version in {v.version for v in record.versions}
    operator_process.start()
    # After the restart the operator finishes: the object shows what the store holds.
    status = cmks.wait_status(
        namespace, "crashy", lambda s: s.get("currentVersion", 0) >= len(stored)
    )
    assert status["keyId"] == key_id
    assert [v["version"] for v in status["versions"]] == list(
        range(1, status["currentVersion"] + 1)
    )


def test_object_whose_key_is_missing_from_the_store_is_reported(
    operator_process: OperatorProcess, cmks: Cmks, namespace: str, kube_api: client.ApiClient
) -> None:
    cmks.create(namespace, "orphan")
    key_id = cmks.wait_state(namespace, "orphan", "Enabled")["keyId"]
    operator_process.stop()
    backup = operator_process.work_dir / "before-orphan.db"
    view = _store_view(operator_process)
    record = view.find(namespace, "orphan")
    assert record is not None
    # Simulate a store restored from a backup taken before this key existed.
    store = SqliteKeyStore(
        operator_process.store_path, load_root_key_file(operator_process.root_key_file)
    )
    store.backup(backup)
    store.close()
    with sqlite3.connect(operator_process.store_path) as db:
        for table in ("material", "versions", "aliases", "import_parameters"):
            db.execute(f"DELETE FROM {table} WHERE key_id = ?", (key_id,))  # noqa: S608
        db.execute("DELETE FROM keys WHERE key_id = ?", (key_id,))
    try:
        operator_process.start()
        cmks.patch(namespace, "orphan", {"spec": {"description": "poke"}})
        status = cmks.wait_status(
            namespace, "orphan", lambda s: _condition(s, "InStore").get("status") == "False"
        )
        assert status["keyId"] == key_id  # no new key was made behind the user's back
        assert _condition(status, "Ready")["reason"] == "KeyMissingFromStore"
        wait_for(
            lambda: "KeyMissingFromStore" in _event_reasons(kube_api, namespace, "orphan"),
            what="the KeyMissingFromStore Event (posted asynchronously)",
        )
    finally:
        operator_process.stop()
        restore_store(
            backup, operator_process.store_path, load_root_key_file(operator_process.root_key_file)
        )
        operator_process.start()


def test_key_whose_object_is_gone_is_reported_at_start(
    operator_process: OperatorProcess, cmks: Cmks, namespace: str, kube_api: client.ApiClient
) -> None:
    cmks.create(namespace, "abandoned")
    key_id = cmks.wait_state(namespace, "abandoned", "Enabled")["keyId"]
    operator_process.stop()
    # The object disappears behind the operator's back (finalizer stripped by hand).
    cmks.patch(namespace, "abandoned", {"metadata": {"finalizers": None}})
    cmks.delete(namespace, "abandoned")
    wait_for(lambda: cmks.get(namespace, "abandoned") is None, what="the object gone")
    operator_process.start()
    events = wait_for(
        lambda: [
            e for e in _events(kube_api, namespace, "abandoned") if e.reason == "KeyWithoutObject"
        ],
        what="the drift event",
    )
    assert key_id in events[0].message
    assert f"kms.cmk.dev/key-id={key_id}" in events[0].message  # how to bind it again
    # The key itself is kept, not destroyed: drift is reported, never papered over.
    operator_process.stop()
    record = _store_view(operator_process).find(namespace, "abandoned")
    assert record is not None and str(record.key_id) == key_id
    assert record.state.value == "Enabled"
    operator_process.start()


def test_a_new_object_takes_a_kept_key_only_by_claiming_it(
    operator_process: OperatorProcess, cmks: Cmks, namespace: str, kube_api: client.ApiClient
) -> None:
    """Issue 8, item 1: keys are bound to their object's UID. A new object of the same name
    gets neither the old key nor a new one until it claims the old one by id."""
    cmks.create(namespace, "kept", {"aliases": ["alias/kept"]})
    key_id = cmks.wait_state(namespace, "kept", "Enabled")["keyId"]
    operator_process.stop()
    cmks.patch(namespace, "kept", {"metadata": {"finalizers": None}})
    cmks.delete(namespace, "kept")
    wait_for(lambda: cmks.get(namespace, "kept") is None, what="the object gone")
    operator_process.start()

    cmks.create(namespace, "kept", {"aliases": ["alias/kept"]})
    status = cmks.wait_status(
        namespace, "kept", lambda s: _condition(s, "Ready").get("reason") == "KeyBoundElsewhere"
    )
    assert _condition(status, "Ready")["status"] == "False"
    assert key_id in _condition(status, "Ready")["message"]
    assert not status.get("keyId")  # no new key behind the user's back
    wait_for(
        lambda: "KeyBoundElsewhere" in _event_reasons(kube_api, namespace, "kept"),
        what="the KeyBoundElsewhere Event",
    )
    cmks.patch(namespace, "kept", {"metadata": {"annotations": {"kms.cmk.dev/key-id": key_id}}})
    bound = cmks.wait_state(namespace, "kept", "Enabled")
    assert bound["keyId"] == key_id and bound["alias"] == "alias/kept"


def _kmsctl(operator: OperatorProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kms_operator.cli.kmsctl", *args,
         "--kubeconfig", str(operator.plane.kubeconfig)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_kmsctl_rotate_and_cancel_deletion(
    operator_process: OperatorProcess, cmks: Cmks, namespace: str
) -> None:
    cmks.create(namespace, "cli", {"pendingWindowDays": 30})
    key_id = cmks.wait_state(namespace, "cli", "Enabled")["keyId"]
    rotated = _kmsctl(operator_process, "rotate", "-n", namespace, "cli")
    assert rotated.returncode == 0, rotated.stderr
    cmks.wait_status(namespace, "cli", lambda s: s.get("currentVersion") == 2)

    refused = _kmsctl(operator_process, "cancel-deletion", "-n", namespace, "cli")
    assert refused.returncode != 0 and "not being deleted" in refused.stderr

    old_uid = cmks.get(namespace, "cli")["metadata"]["uid"]  # type: ignore[index]
    cmks.delete(namespace, "cli")
    cmks.wait_state(namespace, "cli", "PendingDeletion")
    cancelled = _kmsctl(operator_process, "cancel-deletion", "-n", namespace, "cli")
    assert cancelled.returncode == 0, cancelled.stderr
    body = wait_for(
        lambda: (
            (b := cmks.get(namespace, "cli"))
            and b["metadata"]["uid"] != old_uid
            and (b.get("status") or {}).get("state") == "Disabled"
            and b
        ),
        what="the object recreated Disabled",
    )
    assert body["status"]["keyId"] == key_id and body["status"]["currentVersion"] == 2
    missing = _kmsctl(operator_process, "rotate", "-n", namespace, "nope")
    assert missing.returncode != 0 and "not found" in missing.stderr

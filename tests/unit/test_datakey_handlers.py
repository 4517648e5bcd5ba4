"""DataKey's Kopf handlers without a cluster: a ``kopf.Body`` in, the status patch, the error
Kopf gets and the Events posted out, over a real key service on a SQLite store.

The cluster is faked at its edge: Secrets, CustomerMasterKey objects, namespaces and the
Event poster (``Objects.post_event_on``) record what they were given.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, cast

import kopf
import pytest
from tests.support.changes import rotate, set_enabled

from kms_operator.keys.service import KeyService
from kms_operator.kube.objects import NamespaceInfo
from kms_operator.operator import outcomes
from kms_operator.operator.datakeys import decisions, handlers, views
from kms_operator.operator.datakeys.namespaces import NamespaceUids
from kms_operator.operator.runtime import Runtime
from kms_operator.serving.audit import AuditRecord
from kms_operator.settings import Settings

pytestmark = pytest.mark.unit

NS, NS_UID = "team-a", "ns-uid-1"
KEY_OBJECT_UID = "cmk-uid-1"


class FakeSecrets:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = {}

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.items.get((namespace, name))
        return json.loads(json.dumps(found)) if found is not None else None

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        self.items[namespace, body["metadata"]["name"]] = body

    def replace(self, namespace: str, body: dict[str, Any]) -> None:
        self.items[namespace, body["metadata"]["name"]] = body


class FakeObjects:
    """Namespaces, CustomerMasterKey objects and the Events posted on any object."""

    def __init__(self) -> None:
        self.cmks: dict[tuple[str, str], dict[str, Any]] = {}
        #: (kind, namespace, name, uid, type, reason) of every Event posted.
        self.events: list[tuple[str, str, str, str | None, str, str]] = []
        self.messages: list[str] = []

    def namespace_info(self, namespace: str) -> NamespaceInfo | None:
        return NamespaceInfo(uid=NS_UID, terminating=False) if namespace == NS else None

    def get_cmk(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.cmks.get((namespace, name))

    def create_cmk(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.cmks[namespace, body["metadata"]["name"]] = body
        return body

    def post_event_on(
        self,
        kind: str,
        namespace: str,
        name: str,
        uid: str | None,
        *,
        type_: str,
        reason: str,
        message: str,
    ) -> None:
        self.events.append((kind, namespace, name, uid, type_, reason))
        self.messages.append(message)


class ListSink:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.broken = False

    def write(self, record: AuditRecord) -> None:
        if self.broken:
            raise OSError("disk full")
        self.lines.append(record.to_json())

    def close(self) -> None:
        pass


class Cluster:
    """One DataKey object and what the handlers wrote about it."""

    def __init__(self, service: KeyService) -> None:
        self.service = service
        self.objects = FakeObjects()
        self.secrets = FakeSecrets()
        self.sink = ListSink()
        runtime = Runtime(
            service=service,
            objects=cast(Any, self.objects),
            scheduler=cast(Any, None),
            settings=Settings(),
            connection=cast(Any, None),
            audit=self.sink,
        )
        self.memo = kopf.Memo(
            runtime=runtime,
            dk_secrets=self.secrets,
            dk_namespaces=NamespaceUids(self.objects.namespace_info),
        )
        self.uid = str(uuid.uuid4())
        self.spec: dict[str, Any] = {"keyRef": {"name": "k"}}
        self.status: dict[str, Any] = {}

    def body(self, **meta: Any) -> kopf.Body:
        return kopf.Body(
            {
                "apiVersion": "kms.cmk.dev/v1alpha1",
                "kind": "DataKey",
                "metadata": {
                    "namespace": NS,
                    "name": "dek",
                    "uid": self.uid,
                    "generation": 1,
                    **meta,
                },
                "spec": self.spec,
                "status": self.status,
            }
        )

    async def reconcile(self) -> dict[str, Any]:
        """Run the create/update/resume handler; the status patch, also merged into status."""
        patch = kopf.Patch()
        try:
            await handlers.reconcile_handler(body=self.body(), patch=patch, memo=self.memo)
        finally:
            self.status = {**self.status, **dict(patch.get("status") or {})}
        return dict(patch.get("status") or {})

    def events_on_datakey(self) -> list[tuple[str, str]]:
        return [(e[4], e[5]) for e in self.objects.events if e[0] == "DataKey"]


@pytest.fixture
def cluster(service: KeyService) -> Cluster:
    return Cluster(service)


def _key(cluster: Cluster, name: str = "k", **extra: Any) -> uuid.UUID:
    record = cluster.service.create_key(
        NS, name, namespace_uid=NS_UID, object_uid=KEY_OBJECT_UID, **extra
    )
    cluster.objects.cmks[NS, name] = {"metadata": {"name": name, "uid": KEY_OBJECT_UID}}
    return record.key_id


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


async def test_ready_patches_status_and_announces_the_new_data_key(cluster: Cluster) -> None:
    key_id = _key(cluster)

    status = await cluster.reconcile()

    assert status["keyId"] == str(key_id) and status["keyVersion"] == 1
    assert status["secretName"] == "dek" and status["observedGeneration"] == 1
    ready = _ready(status)
    assert (ready["status"], ready["reason"]) == ("True", decisions.SECRET_READY)
    assert cluster.objects.events == [
        ("DataKey", NS, "dek", cluster.uid, "Normal", decisions.GENERATED)
    ]
    assert (NS, "dek") in cluster.secrets.items

    await cluster.reconcile()  # a resume: the data key is kept, nothing to announce

    assert cluster.events_on_datakey() == [("Normal", decisions.GENERATED)]


async def test_a_missing_key_is_said_once_and_waited_for(cluster: Cluster) -> None:
    status = await cluster.reconcile()  # no TemporaryError: the timer waits for the key

    ready = _ready(status)
    assert (ready["status"], ready["reason"]) == ("False", decisions.KEY_NOT_FOUND)
    assert "keyId" not in status and "keyVersion" not in status
    assert cluster.events_on_datakey() == [("Warning", decisions.KEY_NOT_FOUND)]

    await cluster.reconcile()
    assert cluster.events_on_datakey() == [("Warning", decisions.KEY_NOT_FOUND)]  # not again


async def test_waiting_for_the_default_key_is_a_short_retry(cluster: Cluster) -> None:
    cluster.spec = {}

    with pytest.raises(kopf.TemporaryError) as raised:
        await cluster.reconcile()

    assert raised.value.delay == decisions.DEFAULT_KEY_WAIT
    assert _ready(cluster.status)["reason"] == decisions.WAITING_FOR_DEFAULT_KEY
    assert (NS, views.DEFAULT_KEY_NAME) in cluster.objects.cmks
    assert cluster.events_on_datakey() == [("Normal", decisions.DEFAULT_KEY_CREATED)]


async def test_a_refusing_key_is_reported_on_the_datakey_and_on_the_key(cluster: Cluster) -> None:
    key_id = _key(cluster)
    await cluster.reconcile()
    set_enabled(cluster.service, key_id, False)

    status = await cluster.reconcile()  # refused: no retry, the timer sees the key come back

    ready = _ready(status)
    assert (ready["status"], ready["reason"]) == ("False", "KeyDisabled")
    assert status["keyId"] == str(key_id) and "keyVersion" not in status
    assert cluster.objects.events[1:] == [
        ("DataKey", NS, "dek", cluster.uid, "Warning", "KeyDisabled"),
        ("CustomerMasterKey", NS, "k", KEY_OBJECT_UID, "Warning", "KeyDisabled"),
    ]
    assert (
        "DataKey team-a/dek (Secret dek) still depends on this key" in (cluster.objects.messages[2])
    )

    await cluster.reconcile()
    assert len(cluster.objects.events) == 3  # the same refusal is not posted again


async def test_an_unwritable_audit_line_is_retried(cluster: Cluster) -> None:
    _key(cluster)
    cluster.sink.broken = True

    with pytest.raises(kopf.TemporaryError) as raised:
        await cluster.reconcile()

    assert raised.value.delay == outcomes.RETRY_DELAY
    assert _ready(cluster.status)["reason"] == decisions.AUDIT_FAILED
    assert cluster.secrets.items == {}
    assert cluster.events_on_datakey() == [("Warning", decisions.AUDIT_FAILED)]

    cluster.sink.broken = False
    await cluster.reconcile()  # Kopf's retry delivers it
    assert _ready(cluster.status)["reason"] == decisions.SECRET_READY


async def test_a_spec_the_key_service_refuses_is_invalid_spec(cluster: Cluster) -> None:
    _key(cluster)
    cluster.spec = {"keyRef": {"name": "k"}, "numberOfBytes": 4096}  # beyond what it generates

    status = await cluster.reconcile()  # permanent: written down, not retried

    ready = _ready(status)
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert cluster.events_on_datakey() == [("Warning", "InvalidSpec")]


async def test_a_terminating_datakey_is_left_to_the_garbage_collector(cluster: Cluster) -> None:
    _key(cluster)
    patch = kopf.Patch()
    body = cluster.body(deletionTimestamp="2026-01-01T12:00:00Z")

    await handlers.reconcile_handler(body=body, patch=patch, memo=cluster.memo)

    assert not patch and cluster.objects.events == [] and cluster.secrets.items == {}


async def test_the_timer_reconciles_after_a_rotation_only(cluster: Cluster) -> None:
    key_id = _key(cluster)
    await cluster.reconcile()
    cluster.memo["dk_last_full"] = time.monotonic()  # a full check just ran

    idle = kopf.Patch()
    await handlers.check(body=cluster.body(), patch=idle, memo=cluster.memo)
    assert not idle

    rotate(cluster.service, key_id)
    rotated = kopf.Patch()
    await handlers.check(body=cluster.body(), patch=rotated, memo=cluster.memo)

    assert rotated["status"]["keyVersion"] == 2
    assert cluster.events_on_datakey()[-1] == ("Normal", decisions.RE_ENCRYPTED)

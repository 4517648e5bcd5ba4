"""One DataKey reconciliation over a real key service, with the cluster faked at its edge.

Security review (issue 8): item 1 (a key of an earlier namespace of the same name is never
used), item 3c (every data key generated, decrypted or re-encrypted writes an audit line naming
the DataKey, fail-closed), item 10 (a blob of a key outside the DataKey's namespace is
``InvalidCiphertext``: it is neither shown in status nor given Events).
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any, cast

import pytest
from tests.support.changes import rotate, set_enabled

from kms_operator.keys.service import KeyService
from kms_operator.kube.objects import NamespaceInfo
from kms_operator.operator import outcomes
from kms_operator.operator.datakeys import audit, decisions, namespaces, views
from kms_operator.operator.datakeys.audit import DataKeyAuditRecord
from kms_operator.operator.datakeys.decisions import Reconciliation
from kms_operator.operator.datakeys.namespaces import NamespaceUids
from kms_operator.operator.datakeys.reconciling import reconcile
from kms_operator.operator.datakeys.views import DataKeyView
from kms_operator.operator.runtime import Runtime
from kms_operator.serving.audit import AuditRecord
from kms_operator.settings import Settings

pytestmark = pytest.mark.unit

NS, OTHER = "team-a", "team-b"
NS_UID, NEW_NS_UID = "ns-uid-1", "ns-uid-2"
DK_UID = "0b3c1a5e-0000-4000-8000-000000000001"


class FakeSecrets:
    """The Secrets API: one dict per (namespace, name); writes counted."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes = 0

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.items.get((namespace, name))
        return json.loads(json.dumps(found)) if found is not None else None

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        self.writes += 1
        self.items[namespace, body["metadata"]["name"]] = body

    def replace(self, namespace: str, body: dict[str, Any]) -> None:
        self.writes += 1
        self.items[namespace, body["metadata"]["name"]] = body


class FakeObjects:
    """Namespaces (name -> UID) and CustomerMasterKey objects, as the operator reads them."""

    def __init__(self) -> None:
        self.namespaces: dict[str, str] = {NS: NS_UID, OTHER: "other-uid"}
        self.lookups = 0
        self.cmks: dict[tuple[str, str], dict[str, Any]] = {}

    def namespace_info(self, namespace: str) -> NamespaceInfo | None:
        self.lookups += 1
        uid = self.namespaces.get(namespace)
        return None if uid is None else NamespaceInfo(uid=uid, terminating=False)

    def get_cmk(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.cmks.get((namespace, name))

    def create_cmk(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.cmks[namespace, body["metadata"]["name"]] = body
        return body


class ListSink:
    """An audit sink keeping the lines (as JSON) it was given; ``broken`` makes writes fail."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.broken = False

    def write(self, record: AuditRecord) -> None:
        if self.broken:
            raise OSError("disk full")
        self.lines.append(json.loads(record.to_json()))

    def close(self) -> None:
        pass


class World:
    def __init__(self, service: KeyService) -> None:
        self.service = service
        self.secrets = FakeSecrets()
        self.objects = FakeObjects()
        self.sink = ListSink()
        self.clock = [0.0]
        self.namespaces = NamespaceUids(self.objects.namespace_info, clock=lambda: self.clock[0])
        self.runtime = cast(
            Runtime,
            Runtime(
                service=service,
                objects=cast(Any, self.objects),
                scheduler=cast(Any, None),
                settings=Settings(),
                connection=cast(Any, None),
                audit=self.sink,
            ),
        )
        self.uids: dict[tuple[str, str], str] = {}

    def view(
        self,
        name: str = "dek",
        spec: dict[str, Any] | None = None,
        *,
        namespace: str = NS,
        status: dict[str, Any] | None = None,
    ) -> DataKeyView:
        uid = self.uids.setdefault((namespace, name), str(uuid.uuid4()))
        return DataKeyView.of(
            {
                "metadata": {"namespace": namespace, "name": name, "uid": uid, "generation": 1},
                "spec": spec if spec is not None else {"keyRef": {"name": "k"}},
                "status": status or {},
            }
        )

    def reconcile(self, view: DataKeyView) -> Reconciliation:
        return reconcile(self.runtime, cast(Any, self.secrets), self.namespaces, view)

    def secret(self, name: str = "dek", namespace: str = NS) -> dict[str, Any]:
        return self.secrets.items[namespace, name]

    def put_ciphertext(self, blob: bytes, name: str = "dek", namespace: str = NS) -> None:
        self.secret(name, namespace)["data"]["ciphertext"] = base64.b64encode(blob).decode()


@pytest.fixture
def world(service: KeyService) -> World:
    return World(service)


def _key(service: KeyService, name: str = "k", namespace: str = NS, **extra: Any) -> uuid.UUID:
    uid = NS_UID if namespace == NS else "other-uid"
    record = service.create_key(namespace, name, namespace_uid=uid, object_uid=f"o-{name}", **extra)
    return record.key_id


def _data(secret: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


def _context(name: str = "dek", namespace: str = NS) -> dict[str, str]:
    return {"kms.cmk.dev/namespace": namespace, "kms.cmk.dev/datakey": name}


# -- item 10: only keys of the DataKey's own namespace --------------------------------------


def test_a_blob_of_another_namespaces_key_is_invalid_ciphertext(world: World) -> None:
    own = _key(world.service)
    foreign = _key(world.service, "theirs", namespace=OTHER)
    assert world.reconcile(world.view()).outcome.ready.status
    # Someone with encrypt on a key of another namespace seals a blob with this DataKey's
    # context and puts it into the Secret.
    blob = world.service.encrypt(OTHER, "theirs", bytes(32), _context()).ciphertext_blob
    world.put_ciphertext(blob)
    writes = world.secrets.writes

    result = world.reconcile(world.view(status={"keyVersion": 1}))
    outcome = result.outcome

    assert outcome.ready.reason == "InvalidCiphertext" and not outcome.ready.status
    assert outcome.fields["keyId"] == str(own) != str(foreign)
    assert result.key_notices == ()
    assert world.secrets.writes == writes  # left as it is
    assert _data(world.secret(), "ciphertext") == blob
    assert str(foreign) not in outcome.ready.message


def test_a_refusing_key_of_another_namespace_gets_no_event(world: World) -> None:
    _key(world.service)
    foreign = _key(world.service, "theirs", namespace=OTHER)
    world.reconcile(world.view())
    blob = world.service.encrypt(OTHER, "theirs", bytes(32), _context()).ciphertext_blob
    set_enabled(world.service, foreign, False)
    world.put_ciphertext(blob)

    result = world.reconcile(world.view(status={"keyVersion": 1}))

    assert result.outcome.ready.reason == "InvalidCiphertext"  # not KeyDisabled of theirs
    assert result.outcome.fields["keyId"] != str(foreign)
    assert result.key_notices == ()


def test_a_refusing_key_of_its_own_namespace_is_reported_on_the_key(world: World) -> None:
    own = _key(world.service)
    world.reconcile(world.view())
    set_enabled(world.service, own, False)

    result = world.reconcile(world.view(status={"keyVersion": 1}))

    assert result.outcome.ready.reason == "KeyDisabled"
    assert [(k.namespace, k.name) for k in result.key_notices] == [(NS, "k")]


def test_a_blob_of_a_detached_key_is_invalid_ciphertext(world: World) -> None:
    _key(world.service)
    # A key the earlier namespace of this name left, and a blob it sealed then.
    old = world.service.create_key(NS, "old", namespace_uid="earlier-uid", object_uid="o-old")
    blob = world.service.encrypt(NS, "old", bytes(32), _context()).ciphertext_blob
    world.reconcile(world.view())  # sees the namespace's UID: "old" is detached
    world.put_ciphertext(blob)

    result = world.reconcile(world.view(status={"keyVersion": 1}))

    assert world.service.get(old.key_id).is_detached
    assert result.outcome.ready.reason == "InvalidCiphertext"
    assert result.key_notices == ()


# -- item 1: a key of an earlier namespace of the same name is never used ------------------


def test_a_key_of_an_earlier_namespace_is_not_used(world: World) -> None:
    old = _key(world.service)
    world.objects.namespaces[NS] = NEW_NS_UID  # deleted and created again, same name

    outcome = world.reconcile(world.view()).outcome

    assert outcome.ready.reason == decisions.KEY_NOT_FOUND
    assert world.secrets.writes == 0
    assert world.service.get(old).is_detached
    assert world.sink.lines == []  # no key was used


def test_the_default_key_of_an_earlier_namespace_is_not_used(world: World) -> None:
    world.service.create_key(
        NS,
        views.DEFAULT_KEY_NAME,
        aliases=(views.DEFAULT_KEY_ALIAS,),
        default_service=views.DEFAULT_SERVICE,
        namespace_uid=NS_UID,
        object_uid="o-default",
    )
    world.objects.namespaces[NS] = NEW_NS_UID

    outcome = world.reconcile(world.view(spec={})).outcome

    assert outcome.ready.reason == decisions.WAITING_FOR_DEFAULT_KEY
    assert (NS, views.DEFAULT_KEY_NAME) in world.objects.cmks  # a new object, bound by UID
    assert world.secrets.writes == 0


def test_the_namespace_uid_is_read_once_per_ttl(world: World) -> None:
    _key(world.service)
    for _ in range(3):
        world.reconcile(world.view())
    assert world.objects.lookups == 1
    world.clock[0] += namespaces.NAMESPACE_UID_TTL
    world.reconcile(world.view())
    assert world.objects.lookups == 2


def test_namespace_uids_are_bounded_and_absence_is_not_remembered() -> None:
    asked: list[str] = []

    def lookup(namespace: str) -> NamespaceInfo | None:
        asked.append(namespace)
        return None if namespace == "gone" else NamespaceInfo(f"uid-{namespace}", False)

    uids = NamespaceUids(lookup, entries=2, clock=lambda: 0.0)
    assert uids.uid("gone") is None and uids.uid("gone") is None
    assert asked == ["gone", "gone"]
    for name in ("a", "b", "a", "c", "a", "b"):
        assert uids.uid(name) == f"uid-{name}"
    # a stays (recently used); b was forgotten when c came, and is read again.
    assert asked[2:] == ["a", "b", "c", "b"]


def test_an_unreadable_namespace_is_retried(world: World) -> None:
    _key(world.service)

    def refuse(namespace: str) -> NamespaceInfo | None:
        raise RuntimeError("API server down")

    world.namespaces = NamespaceUids(refuse)
    outcome = world.reconcile(world.view()).outcome
    assert outcome.ready.reason == decisions.NAMESPACE_UNREADABLE
    assert outcome.retry_after == outcomes.RETRY_DELAY
    assert world.secrets.writes == 0


# -- item 3c: audit lines naming the DataKey, fail-closed ------------------------------------


def test_generate_decrypt_and_re_encrypt_write_audit_lines(world: World) -> None:
    key_id = _key(world.service)
    assert world.reconcile(world.view()).outcome.ready.status
    plaintext = _data(world.secret(), "plaintext")
    world.reconcile(world.view(status={"keyVersion": 1}))  # a full check: decrypts
    rotate(world.service, key_id)
    assert world.reconcile(world.view(status={"keyVersion": 1})).outcome.fields["keyVersion"] == 2

    lines = world.sink.lines
    assert [(line["operation"], line["outcome"]) for line in lines] == [
        ("generate-data-key", "allowed"),
        ("decrypt", "allowed"),
        ("decrypt", "allowed"),
        ("re-encrypt", "allowed"),
    ]
    for line in lines:
        assert line["caller"] == audit.OPERATOR_CALLER
        assert line["dataKey"] == f"{NS}/dek"
        assert line["namespace"] == NS and line["keyName"] == "k"
        assert line["keyId"] == str(key_id)
    assert [line["keyVersion"] for line in lines] == [1, 1, 1, 2]
    assert lines[3]["source"] == {
        "namespace": NS,
        "keyName": "k",
        "keyId": str(key_id),
        "keyVersion": 1,
    }
    text = json.dumps(lines)
    for form in (base64.b64encode(plaintext).decode(), plaintext.hex()):
        assert form not in text


def test_a_refused_use_is_audited_too(world: World) -> None:
    key_id = _key(world.service, enabled=False)
    outcome = world.reconcile(world.view()).outcome
    assert outcome.ready.reason == "KeyDisabled"
    assert [(x["operation"], x["outcome"], x["errorCode"]) for x in world.sink.lines] == [
        ("generate-data-key", "error", "KeyDisabled")
    ]
    assert world.sink.lines[0]["keyId"] == str(key_id)


def test_an_unwritable_audit_line_means_no_data_key_is_delivered(world: World) -> None:
    _key(world.service)
    world.sink.broken = True

    outcome = world.reconcile(world.view()).outcome

    assert outcome.ready.reason == decisions.AUDIT_FAILED and not outcome.ready.status
    assert outcome.retry_after == outcomes.RETRY_DELAY
    assert world.secrets.writes == 0 and world.secrets.items == {}
    assert [n.reason for n in outcome.notices] == [decisions.AUDIT_FAILED]
    assert "fail-closed" in outcome.ready.message

    world.sink.broken = False
    assert world.reconcile(world.view()).outcome.ready.status  # the retry delivers it


def test_an_unwritable_audit_line_stops_a_re_encryption(world: World) -> None:
    key_id = _key(world.service)
    world.reconcile(world.view())
    before = world.secret()
    rotate(world.service, key_id)
    world.sink.broken = True

    outcome = world.reconcile(world.view(status={"keyVersion": 1})).outcome

    assert outcome.ready.reason == decisions.AUDIT_FAILED
    assert world.secret() == before


def test_audit_record_is_the_api_line_plus_the_data_key() -> None:
    record = DataKeyAuditRecord(
        "generate-data-key",
        "dk-1",
        caller=audit.OPERATOR_CALLER,
        namespace=NS,
        key_name="k",
        outcome="allowed",
        data_key=f'{NS}/"quoted"',
    )
    plain = AuditRecord(
        "generate-data-key",
        "dk-1",
        caller=audit.OPERATOR_CALLER,
        namespace=NS,
        key_name="k",
        outcome="allowed",
    )
    line = json.loads(record.to_json(now=0.0))
    assert line.pop("dataKey") == f'{NS}/"quoted"'
    assert line == json.loads(plain.to_json(now=0.0))

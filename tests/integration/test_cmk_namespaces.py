"""Keys and the life of their namespace (issue 8, item 1), against the real operator process.

A namespace's default key used to outlive the namespace (its deletion was refused and the
object recreated, which a terminating namespace refuses), and a namespace created again with
the same name inherited it: blobs the old tenant left behind decrypted. Now:

* deleting a namespace schedules every key in it, default keys included; the namespace waits
  for the window (the local control plane has no namespace controller: the test deletes the
  keys as that controller would, and the namespace stays Terminating);
* a namespace of the same name with another UID never gets the old keys: they are detached
  (Event ``KeyWithoutObject``), its objects get new keys and the old blobs do not decrypt.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.integration.operator_fixtures import Cmks, CustomObjects, OperatorProcess, wait_for

from kms_operator.keys.service import KeyService
from kms_operator.store.rootkey import load_root_key_file
from kms_operator.store.sqlite import SqliteKeyStore

DEFAULT_NAME, DEFAULT_ALIAS = "kms-default-datakeys", "alias/kms/datakeys"


class DataKeys(CustomObjects):
    kind, plural = "DataKey", "datakeys"


@pytest.fixture(scope="module")
def dks(kube_api: client.ApiClient) -> DataKeys:
    return DataKeys(kube_api)


@pytest.fixture
def make_namespace(kube_api: client.ApiClient) -> Iterator[Callable[[str | None], str]]:
    """Namespaces that may end Terminating (deleting one again answers 409: ignored)."""
    core = client.CoreV1Api(kube_api)
    made: list[str] = []

    def make(name: str | None = None) -> str:
        name = name or f"t-{uuid.uuid4().hex[:10]}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        made.append(name)
        return name

    yield make
    for name in made:
        try:
            core.delete_namespace(name)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise


def _events(kube_api: client.ApiClient, namespace: str, name: str, reason: str) -> list[Any]:
    items = client.CoreV1Api(kube_api).list_namespaced_event(namespace).items
    return [e for e in items if e.involved_object.name == name and e.reason == reason]


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or () if c["type"] == kind), {})


def _date(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _terminating(kube_api: client.ApiClient, namespace: str) -> bool:
    return bool(client.CoreV1Api(kube_api).read_namespace(namespace).status.phase == "Terminating")


def test_namespace_deletion_schedules_every_key_default_included(
    operator_process: OperatorProcess,
    cmks: Cmks,
    dks: DataKeys,
    make_namespace: Callable[[str | None], str],
    kube_api: client.ApiClient,
) -> None:
    namespace = make_namespace(None)
    cmks.create(namespace, "orders", {"pendingWindowDays": 7})
    cmks.wait_state(namespace, "orders", "Enabled")
    dks.create(namespace, "dek", {})  # no keyRef: the operator creates the default key
    default = cmks.wait_state(namespace, DEFAULT_NAME, "Enabled", timeout=60)
    assert default["default"] is True
    cmks.patch(namespace, DEFAULT_NAME, {"spec": {"pendingWindowDays": 7}})
    cmks.wait_status(
        namespace, DEFAULT_NAME, lambda s: s.get("observedGeneration") == 2, what="window applied"
    )
    default_uid = cmks.get(namespace, DEFAULT_NAME)["metadata"]["uid"]  # type: ignore[index]

    client.CoreV1Api(kube_api).delete_namespace(namespace)
    wait_for(lambda: _terminating(kube_api, namespace), what="the namespace Terminating")
    requested = time.time()
    for name in ("orders", DEFAULT_NAME):  # what the namespace controller does
        cmks.delete(namespace, name)

    window = 7 * operator_process.day_seconds
    for name in ("orders", DEFAULT_NAME):
        status = cmks.wait_state(namespace, name, "PendingDeletion")
        assert window - 2 <= _date(status["deletionDate"]) - requested <= window + 2
        # The API server refuses new Events in a terminating namespace: the why is in the
        # status (and the operator's log).
        synced = _condition(status, "Synced")
        assert (synced["status"], synced["reason"]) == ("True", "DeletionScheduled")
        assert "is being deleted" in synced["message"] and "waits" in synced["message"]
    default = cmks.status(namespace, DEFAULT_NAME)
    assert "default key goes with it" in _condition(default, "Synced")["message"]
    # Not refused, not recreated: the same object waits for its key's destruction.
    body = cmks.get(namespace, DEFAULT_NAME)
    assert body is not None and body["metadata"]["uid"] == default_uid
    assert "DefaultKeyProtected" not in operator_process.log_text()
    assert "DeletionFailed" not in operator_process.log_text()

    # At the date, both keys are destroyed and both objects released; the namespace could
    # finish now (here it stays Terminating: no namespace controller runs).
    for name in ("orders", DEFAULT_NAME):
        wait_for(
            lambda n=name: cmks.get(namespace, n) is None,
            timeout=window + 30,
            what=f"{name} destroyed and released",
        )
    assert time.time() >= requested + window - 1
    assert _terminating(kube_api, namespace)


# -- a namespace created again with the same name --------------------------------------------


def _token(kube_api: client.ApiClient, namespace: str) -> str:
    """A ServiceAccount of ``namespace`` allowed every verb on its keys."""
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    name = "tenant"
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
    )
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name=name),
            rules=[
                client.V1PolicyRule(
                    api_groups=["kms.cmk.dev"],
                    resources=["customermasterkeys"],
                    verbs=["encrypt", "decrypt", "generatedatakey"],
                )
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=name),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name=name
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)],
        ),
    )
    answer = core.create_namespaced_service_account_token(
        name,
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=["kms.cmk.dev"], expiration_seconds=600)
        ),
    )
    return str(answer.status.token)


def _call(
    operator: OperatorProcess, path: str, body: dict[str, Any], token: str
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(  # noqa: S310 - a fixed https URL
        operator.api_url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    context = ssl.create_default_context(cafile=str(operator.ca_file))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _plant_old_tenant(operator: OperatorProcess, namespace: str) -> dict[str, tuple[str, str]]:
    """With the operator stopped: keys of an earlier namespace ``namespace`` (another UID) in
    the store, each with a blob the old tenant left behind. name -> (key id, blob)."""
    store = SqliteKeyStore(operator.store_path, load_root_key_file(operator.root_key_file))
    try:
        service = KeyService(store)
        planted = {}
        for name, extra in (
            ("orders", {"aliases": ("alias/orders",)}),
            (DEFAULT_NAME, {"aliases": (DEFAULT_ALIAS,), "default_service": "datakeys"}),
        ):
            record = service.create_key(
                namespace,
                name,
                namespace_uid=f"uid-of-an-earlier-{namespace}",
                object_uid=f"uid-of-an-earlier-{name}",
                **extra,  # type: ignore[arg-type]
            )
            blob = service.encrypt(namespace, name, b"the old tenant's secret").ciphertext_blob
            planted[name] = (str(record.key_id), base64.b64encode(blob).decode())
        return planted
    finally:
        store.close()


@pytest.mark.parametrize("when", ["before-start", "after-start"])
def test_a_namespace_created_again_never_inherits_keys(
    operator_process: OperatorProcess,
    *,
    cmks: Cmks,
    dks: DataKeys,
    make_namespace: Callable[[str | None], str],
    kube_api: client.ApiClient,
    when: str,
) -> None:
    """The earlier namespace's keys are in the store, bound to its UID (in real life: its
    finalizers were stripped by hand, so it finished while its keys lived on)."""
    namespace = f"t-{uuid.uuid4().hex[:10]}"
    operator_process.stop()
    planted = _plant_old_tenant(operator_process, namespace)
    if when == "before-start":
        make_namespace(namespace)
    operator_process.start()
    if when == "after-start":
        make_namespace(namespace)

    cmks.create(namespace, "orders", {"aliases": ["alias/orders"]})
    status = cmks.wait_state(namespace, "orders", "Enabled")
    dks.create(namespace, "dek", {})  # resolves alias/kms/datakeys: the default key
    default = cmks.wait_state(namespace, DEFAULT_NAME, "Enabled", timeout=60)
    # New keys, not the old tenant's.
    assert status["keyId"] != planted["orders"][0]
    assert default["keyId"] != planted[DEFAULT_NAME][0]
    assert status["alias"] == "alias/orders"
    dk = dks.wait_status(
        namespace, "dek", lambda s: s.get("keyId") is not None, timeout=60, what="the DataKey"
    )
    assert dk["keyId"] == default["keyId"]

    token = _token(kube_api, namespace)
    for name, (_, blob) in planted.items():
        code, answer = _call(operator_process, "/v1/decrypt", {"ciphertextBlob": blob}, token)
        assert (code, answer["error"]["code"]) == (400, "InvalidCiphertext"), name
    code, answer = _call(
        operator_process,
        f"/v1/namespaces/{namespace}/aliases/orders/encrypt",
        {"plaintext": base64.b64encode(b"new").decode()},
        token,
    )
    assert code == 200 and answer["keyId"] == status["keyId"]

    if when == "before-start":  # the Event needs the namespace to exist when it is posted
        for name, (key_id, _) in planted.items():
            (event,) = wait_for(
                lambda n=name: _events(kube_api, namespace, n, "KeyWithoutObject"),
                what=f"the KeyWithoutObject Event of {name}",
            )
            assert key_id in event.message and "detached" in event.message
    assert "detached" in operator_process.log_text()

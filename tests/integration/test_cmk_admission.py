"""The optional validating webhook: refusals at admission, with a message naming the rule.

The real API server calls the operator's Kopf webhook over TLS on loopback.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.integration.operator_fixtures import Cmks, OperatorProcess, wait_for
from tests.integration.webhooks import chart_webhook_configuration, wait_for_webhook


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


OPERATOR_EXTRA_ARGS = (
    "--webhook",
    "--webhook-host",
    "127.0.0.1",
    "--webhook-port",
    str(_free_port()),
)
DEFAULT = {"labels": {"kms.cmk.dev/default": "true"}}


@pytest.fixture(scope="module", autouse=True)
def webhook_configuration(kube_api: client.ApiClient) -> Iterator[None]:
    """The chart creates it (the operator may only patch it); before the operator starts."""
    with chart_webhook_configuration(kube_api):
        yield


@pytest.fixture(scope="module")
def admission(operator_process: OperatorProcess, kube_api: client.ApiClient) -> OperatorProcess:
    """The operator, once its webhook is patched into the configuration."""
    entry = wait_for_webhook(kube_api)
    assert entry["clientConfig"]["url"].endswith("/cmk-admission")
    assert entry["failurePolicy"] == "Ignore"
    return operator_process


def _refused(call: Any, *args: Any) -> str:
    with pytest.raises(ApiException) as caught:
        call(*args)
    assert caught.value.status in (400, 403, 422), caught.value.body
    return str(caught.value.body)


def test_default_key_disable_rotate_delete_refused_at_admission(
    admission: OperatorProcess, cmks: Cmks, namespace: str
) -> None:
    name = "kms-default-datakeys"
    cmks.create(namespace, name, {"aliases": ["alias/kms/datakeys"]}, **DEFAULT)
    cmks.wait_state(namespace, name, "Enabled")
    assert "cannot be disabled" in _refused(
        cmks.patch, namespace, name, {"spec": {"enabled": False}}
    )
    assert "rotated on demand" in _refused(
        cmks.patch, namespace, name, {"metadata": {"annotations": {"kms.cmk.dev/rotate": "1"}}}
    )
    assert "cannot be deleted" in _refused(cmks.delete, namespace, name)
    body = cmks.get(namespace, name)
    assert body is not None and not body["metadata"].get("deletionTimestamp")
    assert body["spec"]["enabled"] is True


def test_alias_taken_in_the_namespace_refused_at_admission(
    admission: OperatorProcess, cmks: Cmks, namespace: str
) -> None:
    cmks.create(namespace, "holder", {"aliases": ["alias/taken"]})
    cmks.wait_state(namespace, "holder", "Enabled")
    message = _refused(cmks.create, namespace, "grabber", {"aliases": ["alias/taken"]})
    assert "spec.aliases" in message and "holder" in message
    assert "reserved" in _refused(cmks.create, namespace, "sneaky", {"aliases": ["alias/kms/x"]})


def test_ordinary_changes_and_the_operators_own_writes_pass(
    admission: OperatorProcess, cmks: Cmks, namespace: str
) -> None:
    cmks.create(namespace, "plain", {"aliases": ["alias/plain"]})
    cmks.wait_state(namespace, "plain", "Enabled")
    cmks.patch(namespace, "plain", {"spec": {"enabled": False}})
    cmks.wait_state(namespace, "plain", "Disabled")
    cmks.delete(namespace, "plain")  # the finalizer patch of the operator is not refused
    cmks.wait_state(namespace, "plain", "PendingDeletion")


def test_default_key_deletion_admitted_in_a_terminating_namespace(
    admission: OperatorProcess, cmks: Cmks, kube_api: client.ApiClient
) -> None:
    """Issue 8, item 1: refusing it kept the namespace Terminating forever. The local control
    plane has no namespace controller: the test deletes the key as that controller would."""
    core = client.CoreV1Api(kube_api)
    namespace = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    name = "kms-default-datakeys"
    cmks.create(namespace, name, {"aliases": ["alias/kms/datakeys"]}, **DEFAULT)
    cmks.wait_state(namespace, name, "Enabled")
    assert "cannot be deleted" in _refused(cmks.delete, namespace, name)
    core.delete_namespace(namespace)
    wait_for(
        lambda: core.read_namespace(namespace).status.phase == "Terminating",
        what="the namespace Terminating",
    )
    cmks.delete(namespace, name)  # admitted now
    status = cmks.wait_state(namespace, name, "PendingDeletion")
    assert status["deletionDate"]
    body = cmks.get(namespace, name)
    assert body is not None and body["metadata"].get("deletionTimestamp")

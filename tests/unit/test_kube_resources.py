"""The API server's refusals as the AWS lifecycle operations see them
(:mod:`kms_operator.kube.resources`): domain errors, the server's message bounded."""

from __future__ import annotations

import json
from unittest import mock

import pytest
from kubernetes.client.exceptions import ApiException

from kms_operator.errors import AlreadyExists, Conflict, InvalidRequest, NotFound
from kms_operator.kube.resources import MAX_MESSAGE_CHARS, KeyResources

pytestmark = pytest.mark.unit

BODY = {"metadata": {"name": "orders"}, "spec": {}}


def _refusal(status: int, reason: str, message: str = "no") -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps({"kind": "Status", "reason": reason, "message": message})
    return exc


@pytest.fixture
def resources() -> KeyResources:
    """Over a stand-in of the custom objects API (one for the CMK calls of ``Objects`` too)."""
    made = KeyResources(mock.MagicMock())
    custom = mock.MagicMock()
    made._custom = custom
    made._objects._custom = custom
    return made


@pytest.mark.parametrize(
    ("exc", "error", "text"),
    [
        (_refusal(404, "NotFound"), NotFound, "team-a/orders (or its namespace) does not exist"),
        (_refusal(409, "AlreadyExists"), AlreadyExists, "exists already"),
        (_refusal(409, "Conflict", "the object has been modified"), Conflict, "modified"),
        (_refusal(422, "Invalid", "spec.aliases: Too many"), InvalidRequest, "Too many"),
        (_refusal(400, "BadRequest", "x" * 5000), InvalidRequest, "x" * MAX_MESSAGE_CHARS),
    ],
)
def test_refusals_become_domain_errors(
    resources: KeyResources, exc: ApiException, error: type[Exception], text: str
) -> None:
    resources._custom.create_namespaced_custom_object.side_effect = exc
    for create in (resources.create_cmk, resources.create_kmi):
        with pytest.raises(error) as caught:
            create("team-a", BODY)
        assert text in str(caught.value)
        assert "x" * (MAX_MESSAGE_CHARS + 1) not in str(caught.value)


def test_other_failures_are_raised_as_they_are(resources: KeyResources) -> None:
    resources._custom.delete_namespaced_custom_object.side_effect = _refusal(403, "Forbidden")
    with pytest.raises(ApiException):
        resources.delete_kmi("team-a", "orders-1", "uid-1")


def test_deletes_carry_the_uid_precondition(resources: KeyResources) -> None:
    resources.delete_cmk("team-a", "orders", "uid-1")
    call = resources._custom.delete_namespaced_custom_object.call_args
    assert call.args[-2:] == ("customermasterkeys", "orders")
    assert call.kwargs["body"].preconditions.uid == "uid-1"

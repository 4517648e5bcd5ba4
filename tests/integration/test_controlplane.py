"""The integration harness is a real API server: CEL validation, TokenRequest/TokenReview, RBAC."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from kubernetes import client

from kms_operator.devcluster.controlplane import LocalControlPlane

pytestmark = pytest.mark.integration

T = TypeVar("T")

GROUP = "harness.test.kms.cmk.dev"
CEL_MESSAGE = "spec.maxSize must be greater than or equal to spec.minSize"


def wait_for(
    probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2, what: str = ""
) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what or probe}; last: {last!r}")


def test_server_version_is_a_release(kube_api: client.ApiClient) -> None:
    info = client.VersionApi(kube_api).get_code()
    assert re.fullmatch(r"v1\.\d+\.\d+", info.git_version), info.git_version


def test_kubectl_talks_to_the_server(control_plane: LocalControlPlane) -> None:
    proc = control_plane.kubectl("get", "namespace", "kube-system", "-o", "name")
    assert proc.stdout.strip() == "namespace/kube-system"


def _crd(suffix: str) -> dict[str, Any]:
    plural = f"w{suffix}widgets"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "plural": plural,
                "singular": f"w{suffix}widget",
                "kind": f"W{suffix}Widget",
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["minSize", "maxSize"],
                                    "properties": {
                                        "minSize": {"type": "integer"},
                                        "maxSize": {"type": "integer"},
                                    },
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.maxSize >= self.minSize",
                                            "message": CEL_MESSAGE,
                                        }
                                    ],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def test_crd_cel_validation_rejects_invalid_object(
    kube_api: client.ApiClient, namespace: str
) -> None:
    crd = _crd(uuid.uuid4().hex[:6])
    plural = crd["spec"]["names"]["plural"]
    ext = client.ApiextensionsV1Api(kube_api)
    ext.create_custom_resource_definition(crd)

    def established() -> bool:
        got = ext.read_custom_resource_definition(crd["metadata"]["name"])
        conditions = (got.status and got.status.conditions) or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(established, what="the CRD to be Established")
    objects = client.CustomObjectsApi(kube_api)
    kind = crd["spec"]["names"]["kind"]

    def create(name: str, spec: dict[str, int]) -> Any:
        body = {"apiVersion": f"{GROUP}/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}
        return objects.create_namespaced_custom_object(GROUP, "v1", namespace, plural, body)

    # The endpoint can lag "Established" by a moment: retry a valid create on 404.
    def create_valid() -> Any:
        try:
            return create("good", {"minSize": 1, "maxSize": 2})
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    assert wait_for(create_valid, what="the custom resource endpoint")["metadata"]["name"] == "good"

    with pytest.raises(client.ApiException) as info:
        create("bad", {"minSize": 5, "maxSize": 2})
    assert info.value.status == 422, info.value.body
    assert CEL_MESSAGE in str(info.value.body)
    ext.delete_custom_resource_definition(crd["metadata"]["name"])


def _service_account_token(api: client.ApiClient, namespace: str, name: str) -> str:
    core = client.CoreV1Api(api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
    )
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    response = core.create_namespaced_service_account_token(name, namespace, request)
    token: str = response.status.token
    assert token
    return token


def test_token_request_passes_token_review(kube_api: client.ApiClient, namespace: str) -> None:
    token = _service_account_token(kube_api, namespace, "reviewed")
    review = client.AuthenticationV1Api(kube_api).create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
    )
    assert review.status.authenticated is True, review.status.error
    assert review.status.user.username == f"system:serviceaccount:{namespace}:reviewed"
    assert f"system:serviceaccounts:{namespace}" in review.status.user.groups

    bogus = client.AuthenticationV1Api(kube_api).create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token[:-4] + "AAAA"))
    )
    assert not bogus.status.authenticated


def test_subject_access_review_follows_rbac(
    kube_api: client.ApiClient,
    kube_api_factory: Callable[[str], client.ApiClient],
    namespace: str,
) -> None:
    sa = "encrypter"
    token = _service_account_token(kube_api, namespace, sa)
    user = f"system:serviceaccount:{namespace}:{sa}"
    attributes = client.V1ResourceAttributes(
        namespace=namespace,
        verb="encrypt",
        group="kms.cmk.dev",
        resource="customermasterkeys",
        name="key-1",
    )
    authz = client.AuthorizationV1Api(kube_api)

    def allowed() -> bool:
        review = authz.create_subject_access_review(
            client.V1SubjectAccessReview(
                spec=client.V1SubjectAccessReviewSpec(
                    user=user,
                    groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                    resource_attributes=attributes,
                )
            )
        )
        return bool(review.status.allowed)

    def self_allowed() -> bool:
        review = client.AuthorizationV1Api(
            kube_api_factory(token)
        ).create_self_subject_access_review(
            client.V1SelfSubjectAccessReview(
                spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attributes)
            )
        )
        return bool(review.status.allowed)

    assert allowed() is False
    assert self_allowed() is False

    rbac = client.RbacAuthorizationV1Api(kube_api)
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="cmk-encrypt"),
            rules=[
                client.V1PolicyRule(
                    api_groups=["kms.cmk.dev"],
                    resources=["customermasterkeys"],
                    verbs=["encrypt"],
                    resource_names=["key-1"],
                )
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="cmk-encrypt"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="cmk-encrypt"
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name=sa, namespace=namespace)],
        ),
    )
    wait_for(allowed, what="RBAC to allow encrypt on customermasterkeys/key-1")
    assert self_allowed() is True

    other_key = client.V1ResourceAttributes(
        namespace=namespace,
        verb="encrypt",
        group="kms.cmk.dev",
        resource="customermasterkeys",
        name="key-2",
    )
    review = authz.create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(user=user, resource_attributes=other_key)
        )
    )
    assert review.status.allowed is False

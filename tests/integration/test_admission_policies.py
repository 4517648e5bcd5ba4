"""The chart's ValidatingAdmissionPolicies, enforced by the real kube-apiserver.

Security review (issue 8): item 3b (creating or changing a DataKey needs of the requesting user
the verbs the data-plane API would need: ``generatedatakey`` on its key, plus ``decrypt`` with
``includePlaintext``), item 5 (the operator's ServiceAccount writes only Secrets of type
``kms.cmk.dev/data-key``; with ``rbac.readSecretsForImports=false`` a KeyMaterialImport cannot
name a Secret). The policies are rendered from the chart by helm, as installed; users are
impersonated by the admin client (the API server authorizes impersonated users as themselves).
No operator runs: admission alone is under test.
"""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.integration.operator_fixtures import wait_for

from kms_operator.devcluster.controlplane import LocalControlPlane

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kms-operator"
GROUP, VERSION = "kms.cmk.dev", "v1alpha1"
RELEASE = f"kms-operator-{uuid.uuid4().hex[:6]}"
RELEASE_NAMESPACE = "kms-system"
OPERATOR_USER = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}"


def _render(control_plane: LocalControlPlane) -> list[dict[str, Any]]:
    helm = control_plane.assets / "helm"
    if not helm.exists():
        helm = ROOT / ".envtest" / "bin" / "helm"
    result = subprocess.run(
        [
            str(helm), "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
            "--show-only", "templates/admission-policies.yaml",
            "--set", "rbac.readSecretsForImports=false",
        ],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def policies(
    control_plane: LocalControlPlane, kube_api: client.ApiClient, crds_installed: list[str]
) -> Iterator[list[str]]:
    admission = client.AdmissionregistrationV1Api(kube_api)
    objects = _render(control_plane)
    kinds = [o["kind"] for o in objects]
    assert kinds.count("ValidatingAdmissionPolicy") == 3
    assert kinds.count("ValidatingAdmissionPolicyBinding") == 3
    names = []
    for obj in objects:
        if obj["kind"] == "ValidatingAdmissionPolicy":
            admission.create_validating_admission_policy(obj)
            names.append(obj["metadata"]["name"])
    for obj in objects:
        if obj["kind"] == "ValidatingAdmissionPolicyBinding":
            admission.create_validating_admission_policy_binding(obj)
    try:
        yield names
    finally:
        for obj in objects:
            name = obj["metadata"]["name"]
            if obj["kind"] == "ValidatingAdmissionPolicyBinding":
                admission.delete_validating_admission_policy_binding(name)
            else:
                admission.delete_validating_admission_policy(name)


@pytest.fixture
def as_user(kube_api: client.ApiClient) -> Iterator[Callable[[str], client.ApiClient]]:
    made: list[client.ApiClient] = []

    def make(user: str) -> client.ApiClient:
        api = client.ApiClient(kube_api.configuration)
        api.set_default_header("Impersonate-User", user)
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


def _grant(
    kube_api: client.ApiClient,
    namespace: str,
    name: str,
    rules: list[client.V1PolicyRule],
    subject: client.RbacV1Subject,
) -> None:
    rbac = client.RbacAuthorizationV1Api(kube_api)
    rbac.create_namespaced_role(
        namespace, client.V1Role(metadata=client.V1ObjectMeta(name=name), rules=rules)
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=name),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name=name
            ),
            subjects=[subject],
        ),
    )


def _user(name: str) -> client.RbacV1Subject:
    return client.RbacV1Subject(kind="User", name=name, api_group="rbac.authorization.k8s.io")


def _keys(verbs: list[str], names: list[str] | None = None) -> client.V1PolicyRule:
    return client.V1PolicyRule(
        api_groups=[GROUP], resources=["customermasterkeys"], verbs=verbs, resource_names=names
    )


DATAKEY_WRITER = client.V1PolicyRule(
    api_groups=[GROUP], resources=["datakeys"], verbs=["create", "update", "patch", "get"]
)


def _datakey(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DataKey",
        "metadata": {"name": name},
        "spec": spec,
    }


def _create(
    api: client.ApiClient, namespace: str, spec: dict[str, Any], *, dry_run: bool = False
) -> dict[str, Any]:
    name = f"dk-{uuid.uuid4().hex[:8]}"
    result: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "datakeys", _datakey(name, spec),
        dry_run="All" if dry_run else None,
    )  # fmt: skip
    return result


def _refusal(call: Callable[[], Any]) -> str:
    with pytest.raises(ApiException) as caught:
        call()
    assert caught.value.status == 403, caught.value.body
    message: str = json.loads(caught.value.body)["message"]
    assert "ValidatingAdmissionPolicy" in message, message
    return message


@pytest.fixture
def team(
    policies: list[str],
    namespace: str,
    kube_api: client.ApiClient,
    as_user: Callable[[str], client.ApiClient],
) -> str:
    """A namespace where ``nobody`` may create DataKeys but holds no verb on any key; waits
    until the API server enforces each of the three policies (each loads asynchronously, on
    its own: one being enforced says nothing of the others), probing with dry-run requests."""
    _grant(kube_api, namespace, "nobody", [DATAKEY_WRITER], _user("nobody"))
    _grant(
        kube_api, namespace, "probe-operator-secrets",
        [client.V1PolicyRule(api_groups=[""], resources=["secrets"], verbs=["create"])],
        client.RbacV1Subject(kind="ServiceAccount", name=RELEASE, namespace=RELEASE_NAMESPACE),
    )  # fmt: skip
    nobody, operator = as_user("nobody"), as_user(OPERATOR_USER)
    probes = {
        "generatedatakey": lambda: _create(
            nobody, namespace, {"keyRef": {"name": "payments"}}, dry_run=True
        ),
        "only Secrets of type": lambda: client.CoreV1Api(operator).create_namespaced_secret(
            namespace,
            client.V1Secret(metadata=client.V1ObjectMeta(name="probe"), type="Opaque"),
            dry_run="All",
        ),
        "does not read Secrets for imports": lambda: client.CustomObjectsApi(
            kube_api
        ).create_namespaced_custom_object(
            GROUP, VERSION, namespace, "keymaterialimports",
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "KeyMaterialImport",
             "metadata": {"name": "probe"},
             "spec": {"keyRef": {"name": "byok"},
                      "encryptedKeyMaterialSecretRef": {"name": "wrapped"}}},
            dry_run="All",
        ),
    }  # fmt: skip
    for refusal, probe in probes.items():
        wait_for(
            lambda probe=probe, refusal=refusal: _refused_by_policy(probe, refusal),
            timeout=30,
            what=f"the admission policy refusing with {refusal!r} to be enforced",
        )
    return namespace


def _refused_by_policy(probe: Callable[[], Any], refusal: str) -> bool:
    try:
        probe()
    except ApiException as exc:
        # 403 (reason Forbidden) or 422 (reason Invalid: the imports policy).
        return exc.status in (403, 422) and refusal in exc.body
    return False


# -- item 3b: DataKeys need the key's verbs ------------------------------------------------


def test_create_without_generatedatakey_is_refused_naming_the_verb_and_key(
    team: str, as_user: Callable[[str], client.ApiClient]
) -> None:
    message = _refusal(
        lambda: _create(as_user("nobody"), team, {"keyRef": {"name": "payments"},
                                                  "includePlaintext": False})
    )  # fmt: skip
    assert "user nobody may not create or change this DataKey" in message
    assert "generatedatakey" in message
    assert f"customermasterkeys/payments in namespace {team}" in message


def test_plaintext_needs_decrypt_too(
    team: str, kube_api: client.ApiClient, as_user: Callable[[str], client.ApiClient]
) -> None:
    _grant(
        kube_api, team, "gdk", [DATAKEY_WRITER, _keys(["generatedatakey"], ["payments"])],
        _user("generator"),
    )  # fmt: skip
    generator = as_user("generator")
    created = _create(generator, team, {"keyRef": {"name": "payments"}, "includePlaintext": False})
    assert created["spec"]["includePlaintext"] is False

    message = _refusal(lambda: _create(generator, team, {"keyRef": {"name": "payments"}}))
    assert "includePlaintext true" in message and "decrypt" in message
    assert "customermasterkeys/payments" in message
    # The verbs on one key say nothing about another.
    other = _refusal(
        lambda: _create(generator, team, {"keyRef": {"name": "other"}, "includePlaintext": False})
    )
    assert "customermasterkeys/other" in other


def test_generatedatakey_and_decrypt_admit_a_data_key_with_plaintext(
    team: str, kube_api: client.ApiClient, as_user: Callable[[str], client.ApiClient]
) -> None:
    _grant(
        kube_api, team, "both",
        [DATAKEY_WRITER, _keys(["generatedatakey", "decrypt"], ["payments"])], _user("both"),
    )  # fmt: skip
    created = _create(as_user("both"), team, {"keyRef": {"name": "payments"}})
    assert created["spec"]["includePlaintext"] is True


def test_the_default_key_is_checked_by_its_name(
    team: str, kube_api: client.ApiClient, as_user: Callable[[str], client.ApiClient]
) -> None:
    message = _refusal(lambda: _create(as_user("nobody"), team, {}))
    assert "customermasterkeys/kms-default-datakeys" in message
    _grant(
        kube_api, team, "default-key",
        [DATAKEY_WRITER, _keys(["generatedatakey", "decrypt"], ["kms-default-datakeys"])],
        _user("defaulter"),
    )  # fmt: skip
    assert _create(as_user("defaulter"), team, {})["spec"] == {"includePlaintext": True}


def test_an_alias_needs_the_verb_on_every_key_of_the_namespace(
    team: str, kube_api: client.ApiClient, as_user: Callable[[str], client.ApiClient]
) -> None:
    alias = {"keyRef": {"alias": "alias/payments"}, "includePlaintext": False}
    _grant(
        kube_api, team, "by-name", [DATAKEY_WRITER, _keys(["generatedatakey"], ["payments"])],
        _user("named"),
    )  # fmt: skip
    message = _refusal(lambda: _create(as_user("named"), team, alias))
    assert f"every customermasterkeys in namespace {team}" in message
    assert "alias/payments" in message and "use keyRef.name" in message
    _grant(kube_api, team, "all-keys", [DATAKEY_WRITER, _keys(["generatedatakey"])], _user("wide"))
    assert _create(as_user("wide"), team, alias)["spec"]["keyRef"] == {"alias": "alias/payments"}


def test_spec_changes_are_checked_metadata_changes_are_not(
    team: str, kube_api: client.ApiClient, as_user: Callable[[str], client.ApiClient]
) -> None:
    created = _create(kube_api, team, {"keyRef": {"name": "payments"}})  # the admin's
    name = created["metadata"]["name"]
    nobody = client.CustomObjectsApi(as_user("nobody"))
    message = _refusal(
        lambda: nobody.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            team,
            "datakeys",
            name,
            {"spec": {"secretName": "copy-of-the-data-key"}},
        )
    )
    assert "generatedatakey" in message
    nobody.patch_namespaced_custom_object(
        GROUP, VERSION, team, "datakeys", name, {"metadata": {"labels": {"tier": "gold"}}}
    )


# -- item 5: the operator writes only data-key Secrets; imports without Secrets ------------


def test_the_operator_may_write_only_data_key_secrets(
    team: str, kube_api: client.ApiClient, as_user: Callable[[str], client.ApiClient]
) -> None:
    _grant(
        kube_api, team, "operator-secrets",
        [client.V1PolicyRule(api_groups=[""], resources=["secrets"],
                             verbs=["get", "create", "update"])],
        client.RbacV1Subject(kind="ServiceAccount", name=RELEASE, namespace=RELEASE_NAMESPACE),
    )  # fmt: skip
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_secret(
        team, client.V1Secret(metadata=client.V1ObjectMeta(name="db-password"),
                              string_data={"password": "hunter2"}),
    )  # fmt: skip
    operator = client.CoreV1Api(as_user(OPERATOR_USER))

    def secret(name: str, type_: str) -> client.V1Secret:
        return client.V1Secret(
            metadata=client.V1ObjectMeta(name=name), type=type_,
            data={"ciphertext": base64.b64encode(b"KMS1").decode()},
        )  # fmt: skip

    message = _refusal(lambda: operator.create_namespaced_secret(team, secret("x", "Opaque")))
    assert "only Secrets of type kms.cmk.dev/data-key" in message
    assert f"{team}/x of type Opaque" in message
    # An existing Secret of another type cannot be overwritten either.
    current = operator.read_namespaced_secret("db-password", team)
    current.data = {"password": base64.b64encode(b"stolen").decode()}
    updated = _refusal(lambda: operator.replace_namespaced_secret("db-password", team, current))
    assert "db-password of type Opaque" in updated
    assert core.read_namespaced_secret("db-password", team).data["password"] == (
        base64.b64encode(b"hunter2").decode()
    )
    # What DataKeys write is admitted.
    operator.create_namespaced_secret(team, secret("dek", "kms.cmk.dev/data-key"))
    # Other users are not concerned.
    core.create_namespaced_secret(team, secret("mine", "Opaque"))


def test_imports_without_secret_reading_take_inline_material_only(
    team: str, kube_api: client.ApiClient
) -> None:
    objects = client.CustomObjectsApi(kube_api)

    def kmi(spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = objects.create_namespaced_custom_object(
            GROUP, VERSION, team, "keymaterialimports",
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "KeyMaterialImport",
             "metadata": {"name": f"kmi-{uuid.uuid4().hex[:8]}"},
             "spec": {"keyRef": {"name": "byok"}, **spec}},
        )  # fmt: skip
        return result

    with pytest.raises(ApiException) as caught:
        kmi({"encryptedKeyMaterialSecretRef": {"name": "wrapped"}})
    message = json.loads(caught.value.body)["message"]
    assert "does not read Secrets for imports" in message
    assert "spec.encryptedKeyMaterial" in message
    inline = kmi({"encryptedKeyMaterial": base64.b64encode(b"wrapped").decode()})
    assert inline["spec"]["encryptedKeyMaterial"]

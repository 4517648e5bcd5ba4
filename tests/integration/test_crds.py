"""The CRDs in crds/ as a real kube-apiserver sees them: accepted, defaulted, validated, printed.

No operator runs here: these tests check only what the API server enforces from the schemas
(OpenAPI validation, CEL rules, defaults, server-side printing, discovery).
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = sorted((ROOT / "crds").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
GROUP = "kms.cmk.dev"
VERSION = "v1alpha1"
PLURALS = {
    "CustomerMasterKey": "customermasterkeys",
    "KeyMaterialImport": "keymaterialimports",
    "DataKey": "datakeys",
}
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


def _established(crd: client.V1CustomResourceDefinition) -> bool:
    conditions = (crd.status and crd.status.conditions) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


@pytest.fixture(scope="module")
def crds(kube_api: client.ApiClient) -> list[str]:
    """Apply the three CRDs (create, or replace if present) and wait until they are served."""
    ext = client.ApiextensionsV1Api(kube_api)
    names = []
    for path in CRD_FILES:
        body = yaml.safe_load(path.read_text())
        name = body["metadata"]["name"]
        try:
            ext.create_custom_resource_definition(body)
        except ApiException as exc:
            if exc.status != 409:
                pytest.fail(f"{path.name} refused by the API server: {exc.body}", pytrace=False)
            body["metadata"]["resourceVersion"] = ext.read_custom_resource_definition(
                name
            ).metadata.resource_version
            ext.replace_custom_resource_definition(name, body)
        names.append(name)
    deadline = time.monotonic() + 30
    pending = set(names)
    while pending and time.monotonic() < deadline:
        pending = {n for n in pending if not _established(ext.read_custom_resource_definition(n))}
        time.sleep(0.2)
    assert not pending, f"CRDs not established: {sorted(pending)}"
    for name in names:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        bad = [c for c in conditions if c.type == "NonStructuralSchema" and c.status == "True"]
        assert not bad, f"{name}: {bad[0].message}"
    # Discovery and the custom-objects endpoint may lag "Established" by a moment.
    objects = client.CustomObjectsApi(kube_api)
    deadline = time.monotonic() + 30
    for plural in PLURALS.values():
        while True:
            try:
                objects.list_cluster_custom_object(GROUP, VERSION, plural)
                break
            except ApiException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    return names


@pytest.fixture(scope="module")
def namespace(kube_api: client.ApiClient, crds: list[str]) -> Iterator[str]:
    name = f"crd-test-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


@pytest.fixture
def objects(kube_api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def manifest(kind: str, spec: dict[str, Any] | None, name: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": name or unique(kind.lower())},
    }
    if spec is not None:
        body["spec"] = spec
    return body


def create(objects: client.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> Any:
    return objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[body["kind"]], body
    )


def replace(objects: client.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> Any:
    return objects.replace_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[body["kind"]], body["metadata"]["name"], body
    )


def refusal(exc: ApiException) -> str:
    """The API server's message (it names each invalid field and the rule's message)."""
    assert exc.status == 422, f"expected 422 Invalid, got {exc.status}: {exc.body}"
    message: str = json.loads(exc.body)["message"]
    return message


# --------------------------------------------------------------------------------------------
# (a) the examples are accepted
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_accepted(
    objects: client.CustomObjectsApi, namespace: str, path: Path
) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        body = copy.deepcopy(doc)
        body["metadata"]["name"] = unique(doc["metadata"]["name"])
        created = create(objects, namespace, body)
        for key, value in doc.get("spec", {}).items():
            assert created["spec"][key] == value, f"{path.name}: spec.{key} was changed or pruned"


# --------------------------------------------------------------------------------------------
# (b) invalid objects are refused with a message naming the field
# --------------------------------------------------------------------------------------------

INVALID_ON_CREATE = [
    pytest.param(
        "CustomerMasterKey",
        {"pendingWindowDays": 5},
        ["spec.pendingWindowDays", "greater than or equal to 7"],
        id="cmk-pendingWindowDays-5",
    ),
    pytest.param(
        "CustomerMasterKey",
        {"pendingWindowDays": 31},
        ["spec.pendingWindowDays", "less than or equal to 30"],
        id="cmk-pendingWindowDays-31",
    ),
    pytest.param(
        "CustomerMasterKey",
        {"rotation": {"periodDays": 30}},
        ["spec.rotation.periodDays", "greater than or equal to 90"],
        id="cmk-rotation-periodDays-30",
    ),
    pytest.param(
        "CustomerMasterKey",
        {"rotation": {"periodDays": 3000}},
        ["spec.rotation.periodDays", "less than or equal to 2560"],
        id="cmk-rotation-periodDays-3000",
    ),
    pytest.param(
        "CustomerMasterKey",
        {"aliases": ["payments"]},
        ["spec.aliases[0]", "should match"],
        id="cmk-alias-without-prefix",
    ),
    pytest.param(
        "CustomerMasterKey",
        {"aliases": ["alias/aws/s3"]},
        ["spec.aliases[0]", 'must not start with "alias/aws/"'],
        id="cmk-alias-aws-reserved",
    ),
    pytest.param(
        "CustomerMasterKey",
        {"aliases": ["alias/a", "alias/b", "alias/a"]},
        ["spec.aliases[2]", "Duplicate value", "alias/a"],
        id="cmk-duplicate-aliases",
    ),
    pytest.param(
        "CustomerMasterKey",
        {"origin": "EXTERNAL", "rotation": {"periodDays": 365}},
        ["spec.rotation", "rotation cannot be set when origin is EXTERNAL"],
        id="cmk-external-with-rotation",
    ),
    pytest.param(
        "CustomerMasterKey",
        {"keySpec": "RSA_2048"},
        ["spec.keySpec", "Unsupported value"],
        id="cmk-keySpec-unsupported",
    ),
    pytest.param(
        "KeyMaterialImport",
        {"keyRef": {"name": "byok"}, "wrappingKeySpec": "RSA_1024"},
        ["spec.wrappingKeySpec", "Unsupported value"],
        id="kmi-wrappingKeySpec-unsupported",
    ),
    pytest.param(
        "KeyMaterialImport",
        {"wrappingKeySpec": "RSA_4096"},
        ["spec.keyRef", "Required value"],
        id="kmi-without-keyRef",
    ),
    pytest.param(
        "KeyMaterialImport",
        {
            "keyRef": {"name": "byok"},
            "encryptedKeyMaterial": "d3JhcHBlZA==",
            "encryptedKeyMaterialSecretRef": {"name": "wrapped"},
        },
        ["spec.encryptedKeyMaterial", "at most one of encryptedKeyMaterial"],
        id="kmi-material-inline-and-in-a-secret",
    ),
    pytest.param(
        "KeyMaterialImport",
        {"keyRef": {"name": "byok"}, "encryptedKeyMaterial": "not base64!"},
        ["spec.encryptedKeyMaterial"],
        id="kmi-material-not-base64",
    ),
    pytest.param(
        "DataKey",
        {"keySpec": "AES_256", "numberOfBytes": 32},
        ["spec.numberOfBytes", "at most one of keySpec and numberOfBytes"],
        id="dk-keySpec-and-numberOfBytes",
    ),
    pytest.param(
        "DataKey",
        {"keyRef": {"name": "payments", "alias": "alias/payments"}},
        ["spec.keyRef", "exactly one of name or alias"],
        id="dk-keyRef-name-and-alias",
    ),
    pytest.param(
        "DataKey",
        {"keyRef": {}},
        ["spec.keyRef", "exactly one of name or alias"],
        id="dk-keyRef-empty",
    ),
    pytest.param(
        "DataKey",
        {"numberOfBytes": 2000},
        ["spec.numberOfBytes", "less than or equal to 1024"],
        id="dk-numberOfBytes-2000",
    ),
    pytest.param(
        "DataKey",
        {"numberOfBytes": 0},
        ["spec.numberOfBytes", "greater than or equal to 1"],
        id="dk-numberOfBytes-0",
    ),
    pytest.param(
        "DataKey",
        {"encryptionContext": {"app": "x", "kms.cmk.dev/x": "y"}},
        ["spec.encryptionContext", 'must not start with "kms.cmk.dev/"', "kms.cmk.dev/x"],
        id="dk-encryptionContext-reserved-key",
    ),
    pytest.param(
        "DataKey",
        {"secretName": "Not_A_Name"},
        ["spec.secretName", "should match"],
        id="dk-secretName-not-dns1123",
    ),
]


@pytest.mark.parametrize(("kind", "spec", "fragments"), INVALID_ON_CREATE)
def test_invalid_objects_are_refused(
    objects: client.CustomObjectsApi,
    namespace: str,
    kind: str,
    spec: dict[str, Any],
    fragments: list[str],
) -> None:
    with pytest.raises(ApiException) as caught:
        create(objects, namespace, manifest(kind, spec))
    message = refusal(caught.value)
    for fragment in fragments:
        assert fragment in message, message


INVALID_UPDATES = [
    pytest.param(
        "CustomerMasterKey",
        {},
        {"origin": "EXTERNAL"},
        ["spec.origin", "origin is immutable"],
        id="cmk-origin",
    ),
    pytest.param(
        "KeyMaterialImport",
        {"keyRef": {"name": "a"}},
        {"keyRef": {"name": "b"}},
        ["spec.keyRef", "keyRef is immutable"],
        id="kmi-keyRef",
    ),
    pytest.param(
        "DataKey",
        {"keyRef": {"alias": "alias/a"}},
        {"keyRef": {"alias": "alias/b"}},
        ["spec.keyRef", "keyRef is immutable", "delete and recreate the DataKey"],
        id="dk-keyRef-changed",
    ),
    pytest.param(
        "DataKey",
        {},
        {"keyRef": {"name": "payments"}},
        ["spec.keyRef", "keyRef is immutable"],
        id="dk-keyRef-added",
    ),
    pytest.param(
        "DataKey",
        {"keyRef": {"name": "payments"}},
        {},
        ["spec.keyRef", "keyRef is immutable"],
        id="dk-keyRef-removed",
    ),
    pytest.param(
        "DataKey",
        {"keySpec": "AES_256"},
        {"keySpec": "AES_128"},
        ["spec.keySpec", "keySpec is immutable"],
        id="dk-keySpec",
    ),
    pytest.param(
        "DataKey",
        {"numberOfBytes": 32},
        {"numberOfBytes": 64},
        ["spec.numberOfBytes", "numberOfBytes is immutable"],
        id="dk-numberOfBytes",
    ),
    pytest.param(
        "DataKey",
        {"encryptionContext": {"app": "a"}},
        {"encryptionContext": {"app": "b"}},
        ["spec.encryptionContext", "encryptionContext is immutable"],
        id="dk-encryptionContext",
    ),
    pytest.param(
        "DataKey",
        {"secretName": "first"},
        {"secretName": "second"},
        ["spec.secretName", "secretName is immutable once set"],
        id="dk-secretName",
    ),
    pytest.param(
        "DataKey",
        {"includePlaintext": False},
        {"includePlaintext": True},
        ["spec.includePlaintext", "includePlaintext can change from true to false only"],
        id="dk-includePlaintext-false-to-true",
    ),
    pytest.param(
        "DataKey",
        {"includePlaintext": False},
        {},  # removed: the default (true) comes back, which is the same change
        ["spec.includePlaintext", "includePlaintext can change from true to false only"],
        id="dk-includePlaintext-false-to-default",
    ),
]


@pytest.mark.parametrize(("kind", "before", "after", "fragments"), INVALID_UPDATES)
def test_immutable_fields_refuse_changes(
    objects: client.CustomObjectsApi,
    namespace: str,
    *,
    kind: str,
    before: dict[str, Any],
    after: dict[str, Any],
    fragments: list[str],
) -> None:
    created = create(objects, namespace, manifest(kind, before))
    changed = copy.deepcopy(created)
    for key in before:
        changed["spec"].pop(key, None)
    changed["spec"].update(after)
    with pytest.raises(ApiException) as caught:
        replace(objects, namespace, changed)
    message = refusal(caught.value)
    for fragment in fragments:
        assert fragment in message, message


def test_mutable_fields_accept_changes(objects: client.CustomObjectsApi, namespace: str) -> None:
    cmk = create(objects, namespace, manifest("CustomerMasterKey", {"aliases": ["alias/m"]}))
    cmk["spec"].update(
        enabled=False,
        aliases=["alias/m", "alias/n"],
        rotation={"periodDays": 90},
        pendingWindowDays=7,
        description="changed",
    )
    updated = replace(objects, namespace, cmk)
    assert updated["spec"]["enabled"] is False
    assert updated["spec"]["rotation"] == {"periodDays": 90}

    dk = create(objects, namespace, manifest("DataKey", {}))
    dk["spec"].update(
        secretName="set-later",
        includePlaintext=False,
        secretTemplate={"labels": {"team": "a"}},
    )
    updated = replace(objects, namespace, dk)
    assert updated["spec"]["secretName"] == "set-later"
    assert updated["spec"]["includePlaintext"] is False  # true -> false is admitted
    updated["spec"]["includePlaintext"] = False
    updated["spec"]["secretTemplate"] = {"labels": {"team": "b"}}
    assert replace(objects, namespace, updated)["spec"]["includePlaintext"] is False

    kmi = create(
        objects,
        namespace,
        manifest("KeyMaterialImport", {"keyRef": {"name": "byok"}}),
    )
    kmi["spec"]["encryptedKeyMaterial"] = "d3JhcHBlZA=="
    assert replace(objects, namespace, kmi)["spec"]["encryptedKeyMaterial"] == "d3JhcHBlZA=="


# --------------------------------------------------------------------------------------------
# (c) defaults
# --------------------------------------------------------------------------------------------


def test_customermasterkey_defaults(objects: client.CustomObjectsApi, namespace: str) -> None:
    for spec in ({}, None):
        created = create(objects, namespace, manifest("CustomerMasterKey", spec))
        assert created["spec"] == {
            "keySpec": "SYMMETRIC_DEFAULT",
            "keyUsage": "ENCRYPT_DECRYPT",
            "origin": "KMS",
            "enabled": True,
            "pendingWindowDays": 30,
        }


def test_keymaterialimport_defaults(objects: client.CustomObjectsApi, namespace: str) -> None:
    spec = {"keyRef": {"name": "byok"}, "encryptedKeyMaterialSecretRef": {"name": "material"}}
    created = create(objects, namespace, manifest("KeyMaterialImport", spec))
    assert created["spec"]["wrappingAlgorithm"] == "RSAES_OAEP_SHA_256"
    assert created["spec"]["wrappingKeySpec"] == "RSA_4096"
    assert created["spec"]["encryptedKeyMaterialSecretRef"] == {
        "name": "material",
        "key": "encryptedKeyMaterial",
    }


def test_datakey_defaults(objects: client.CustomObjectsApi, namespace: str) -> None:
    created = create(objects, namespace, manifest("DataKey", None))
    assert created["spec"] == {"includePlaintext": True}


# --------------------------------------------------------------------------------------------
# (d) status the operator writes, and what `kubectl get` shows
# --------------------------------------------------------------------------------------------


def test_operator_status_is_accepted_and_printed(
    kube_api: client.ApiClient, objects: client.CustomObjectsApi, namespace: str
) -> None:
    name = unique("printed")
    create(
        objects,
        namespace,
        manifest("CustomerMasterKey", {"aliases": ["alias/printed", "alias/other"]}, name),
    )
    key_id = str(uuid.uuid4())
    status = {
        "keyId": key_id,
        "state": "PendingDeletion",
        "origin": "KMS",
        "alias": "alias/printed",
        "currentVersion": 2,
        "versions": [
            {"version": 1, "createdAt": "2026-01-01T00:00:00Z", "state": "Enabled"},
            {"version": 2, "createdAt": "2026-06-01T00:00:00Z", "state": "Enabled"},
        ],
        "rotation": {"lastRotatedAt": "2026-06-01T00:00:00Z"},
        "deletionDate": "2030-01-31T00:00:00Z",
        "default": False,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "PendingDeletion",
                "message": "the key is scheduled for deletion",
                "lastTransitionTime": "2026-06-02T00:00:00Z",
                "observedGeneration": 1,
            }
        ],
        "observedGeneration": 1,
    }
    written = objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "customermasterkeys", name, {"status": status}
    )
    assert written["status"] == status, "status fields were pruned or changed"

    method, url, headers, body, post_params = kube_api.param_serialize(
        "GET",
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/customermasterkeys",
        header_params={"Accept": TABLE},
        auth_settings=["BearerToken"],
    )
    response = kube_api.call_api(method, url, headers, body, post_params)
    assert response.status == 200
    table = json.loads(response.read())
    assert table["kind"] == "Table"
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns == ["Name", "State", "Origin", "Alias", "Version", "Deletion", "Age"]
    row = next(r for r in table["rows"] if r["cells"][0] == name)
    cells = dict(zip(columns, row["cells"], strict=True))
    assert cells["State"] == "PendingDeletion"
    assert cells["Origin"] == "KMS"
    assert cells["Alias"] == "alias/printed"
    assert cells["Version"] == 2
    assert cells["Deletion"] == "2030-01-31T00:00:00Z"


def test_status_refuses_unknown_state(objects: client.CustomObjectsApi, namespace: str) -> None:
    name = unique("bad-status")
    create(objects, namespace, manifest("CustomerMasterKey", {}, name))
    with pytest.raises(ApiException) as caught:
        objects.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            "customermasterkeys",
            name,
            {"status": {"state": "Exploded"}},
        )
    assert "status.state" in refusal(caught.value)


def test_discovery_lists_short_names_and_category(kube_api: client.ApiClient, crds: Any) -> None:
    """`kubectl get kms` lists every kind; `cmk`, `kmi`, `dk` work."""
    resources = client.CustomObjectsApi(kube_api).get_api_resources(GROUP, VERSION).resources
    found = {r.name: r for r in resources}
    for kind, plural in PLURALS.items():
        assert found[plural].kind == kind
        assert found[plural].namespaced is True
        assert found[plural].categories == ["kms"]
        assert f"{plural}/status" in found
    assert found["customermasterkeys"].short_names == ["cmk"]
    assert found["keymaterialimports"].short_names == ["kmi"]
    assert found["datakeys"].short_names == ["dk"]

"""Static checks of the CustomResourceDefinitions in crds/ and the examples in manifests/examples/.

No cluster here: the API server's own verdict on these files is in tests/integration/test_crds.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
EXAMPLES_DIR = ROOT / "manifests" / "examples"
GROUP = "kms.cmk.dev"
VERSION = "v1alpha1"

# kind -> (file, plural, short name, printer columns as (name, type, jsonPath))
EXPECTED: dict[str, tuple[str, str, str, list[tuple[str, str, str]]]] = {
    "CustomerMasterKey": (
        "customermasterkeys.yaml",
        "customermasterkeys",
        "cmk",
        [
            ("State", "string", ".status.state"),
            ("Origin", "string", ".spec.origin"),
            ("Alias", "string", ".status.alias"),
            ("Version", "integer", ".status.currentVersion"),
            ("Deletion", "string", ".status.deletionDate"),
            ("Age", "date", ".metadata.creationTimestamp"),
        ],
    ),
    "KeyMaterialImport": (
        "keymaterialimports.yaml",
        "keymaterialimports",
        "kmi",
        [
            ("Key", "string", ".spec.keyRef.name"),
            ("Phase", "string", ".status.phase"),
            ("Expires", "string", ".status.parametersExpireAt"),
            ("ValidTo", "string", ".spec.validTo"),
            ("Age", "date", ".metadata.creationTimestamp"),
        ],
    ),
    "DataKey": (
        "datakeys.yaml",
        "datakeys",
        "dk",
        [
            ("Key", "string", ".status.keyId"),
            ("Version", "integer", ".status.keyVersion"),
            ("Secret", "string", ".status.secretName"),
            ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status'),
            ("Age", "date", ".metadata.creationTimestamp"),
        ],
    ),
}


def load_crd(kind: str) -> dict[str, Any]:
    docs = list(yaml.safe_load_all((CRD_DIR / EXPECTED[kind][0]).read_text()))
    assert len(docs) == 1, f"{EXPECTED[kind][0]} must hold exactly one document"
    crd: dict[str, Any] = docs[0]
    return crd


def schema_of(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = load_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (path, node) for the node and every node below it."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def example_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(EXAMPLES_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


KINDS = sorted(EXPECTED)


def test_crd_directory_holds_exactly_the_three_crds() -> None:
    assert sorted(p.name for p in CRD_DIR.glob("*.yaml")) == sorted(v[0] for v in EXPECTED.values())


@pytest.mark.parametrize("kind", KINDS)
def test_names_scope_and_version(kind: str) -> None:
    crd = load_crd(kind)
    _, plural, short, _ = EXPECTED[kind]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{plural}.{GROUP}"
    spec = crd["spec"]
    assert spec["group"] == GROUP
    assert spec["scope"] == "Namespaced"
    names = spec["names"]
    assert names["kind"] == kind
    assert names["plural"] == plural
    assert names["singular"] == kind.lower()
    assert names["listKind"] == f"{kind}List"
    assert names["shortNames"] == [short]
    assert names["categories"] == ["kms"]
    assert [v["name"] for v in spec["versions"]] == [VERSION]
    version = spec["versions"][0]
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("kind", KINDS)
def test_printer_columns(kind: str) -> None:
    columns = load_crd(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(c["name"], c["type"], c["jsonPath"]) for c in columns] == EXPECTED[kind][3]


@pytest.mark.parametrize("kind", KINDS)
def test_every_schema_node_has_a_description(kind: str) -> None:
    # The API server forbids anything but the type on the root's metadata.
    exempt = {f"{kind}.metadata"}
    missing = [
        path
        for path, node in walk(schema_of(kind), kind)
        if not node.get("description") and path not in exempt
    ]
    assert missing == []
    assert schema_of(kind)["properties"]["metadata"] == {"type": "object"}


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural_enough(kind: str) -> None:
    """Every node has a type; status is operator-owned and never preserves unknown fields."""
    schema = schema_of(kind)
    untyped = [path for path, node in walk(schema, kind) if "type" not in node]
    assert untyped == []
    assert not any(
        node.get("x-kubernetes-preserve-unknown-fields") for _, node in walk(schema, kind)
    )
    assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}


@pytest.mark.parametrize("kind", KINDS)
def test_every_cel_rule_explains_itself(kind: str) -> None:
    rules = [
        (path, rule)
        for path, node in walk(schema_of(kind), kind)
        for rule in node.get("x-kubernetes-validations", [])
    ]
    assert rules, f"{kind} has no CEL rules"
    for path, rule in rules:
        assert rule.get("message") or rule.get("messageExpression"), f"{path}: {rule['rule']}"
        if "fieldPath" in rule:
            assert rule["fieldPath"].startswith(".")


def node_at(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    node = schema
    for part in dotted.split("."):
        node = node["properties"][part]
    return node


def test_customermasterkey_spec_constraints() -> None:
    spec = node_at(schema_of("CustomerMasterKey"), "spec")
    props = spec["properties"]
    assert props["aliases"]["x-kubernetes-list-type"] == "set"
    assert props["aliases"]["maxItems"] == 50
    assert props["aliases"]["items"]["pattern"] == "^alias/[a-zA-Z0-9/_-]{1,250}$"
    assert (props["keySpec"]["enum"], props["keySpec"]["default"]) == (
        ["SYMMETRIC_DEFAULT"],
        "SYMMETRIC_DEFAULT",
    )
    assert props["keyUsage"]["default"] == "ENCRYPT_DECRYPT"
    assert (props["origin"]["enum"], props["origin"]["default"]) == (["KMS", "EXTERNAL"], "KMS")
    assert props["enabled"]["default"] is True
    period = props["rotation"]["properties"]["periodDays"]
    assert (period["minimum"], period["maximum"]) == (90, 2560)
    window = props["pendingWindowDays"]
    assert (window["minimum"], window["maximum"], window["default"]) == (7, 30, 30)
    for immutable in ("keySpec", "keyUsage", "origin"):
        rules = [r["rule"] for r in props[immutable]["x-kubernetes-validations"]]
        assert rules == ["self == oldSelf"], immutable


@pytest.mark.parametrize("kind", KINDS)
def test_conditions_follow_the_metav1_shape(kind: str) -> None:
    conditions = node_at(schema_of(kind), "status.conditions")
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert "type" in item["required"]


def test_examples_exist_for_every_kind() -> None:
    kinds = {doc["kind"] for _, doc in example_documents()}
    assert kinds == set(EXPECTED)


@pytest.mark.parametrize(
    ("filename", "doc"),
    example_documents(),
    ids=[f"{name}:{doc['kind']}" for name, doc in example_documents()],
)
def test_example_maps_to_a_crd_and_uses_only_declared_fields(
    filename: str, doc: dict[str, Any]
) -> None:
    assert doc["apiVersion"] == f"{GROUP}/{VERSION}", filename
    assert doc["kind"] in EXPECTED, filename
    assert "namespace" not in doc["metadata"], "examples apply to any namespace"
    undeclared = list(
        undeclared_fields(doc["spec"], node_at(schema_of(doc["kind"]), "spec"), "spec")
    )
    assert undeclared == [], f"{filename}: fields the API server would prune"


def undeclared_fields(value: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    """Paths in value that the schema does not declare (the API server would prune them)."""
    if isinstance(value, dict):
        if "properties" in schema:
            for key, child in value.items():
                if key not in schema["properties"]:
                    yield f"{path}.{key}"
                else:
                    yield from undeclared_fields(child, schema["properties"][key], f"{path}.{key}")
        elif isinstance(schema.get("additionalProperties"), dict):
            for key, child in value.items():
                yield from undeclared_fields(child, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from undeclared_fields(child, schema.get("items", {}), f"{path}[{index}]")
    elif "enum" in schema and value not in schema["enum"]:
        yield f"{path}={value!r} (not in enum)"

"""The Helm chart on a real node: the operator pod, the examples, Secrets in pods, the API
through its Service, garbage collection, namespace deletion, restarts, upgrade, uninstall and
re-install. Nothing is mocked; the tests run in file order on one release.

The release runs with ``developmentOnly.daySeconds`` = DAY_SECONDS so that a 7-day pending
window lasts 7 * DAY_SECONDS seconds (namespace deletion waits for it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from tests.e2e import scenarios
from tests.e2e.kube import Kube, wait_for

from kms_operator.keys.service import DEFAULT_PENDING_WINDOW_DAYS

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kms-operator"
EXAMPLES = ROOT / "manifests" / "examples"
NS = "kms-e2e"
RELEASE = "kms-operator"  # fullname = release name (it contains the chart's name)
SERVER = f"https://{RELEASE}.{NS}.svc:8443"
CA_CONFIGMAP = f"{RELEASE}-ca"
POD = f"{RELEASE}-0"
PVC = f"data-{RELEASE}-0"
DAY_SECONDS = int(os.environ.get("KMS_E2E_DAY_SECONDS", "20"))
APP = "kms-e2e-app"
API = "kms-e2e-api"
DOOMED = "kms-e2e-doomed"
#: What the tests pass between each other (file order).
STATE: dict[str, Any] = {}


def _values(kube: Kube, *extra: str) -> list[str]:
    sets = [
        f"image.repository={kube.image_repository}",
        f"image.tag={kube.image_tag}",
        f"image.pullPolicy={kube.pull_policy}",
        f"developmentOnly.daySeconds={DAY_SECONDS}",
        f"api.tokenAudience={scenarios.AUDIENCE}",
        *extra,
    ]
    return [arg for value in sets for arg in ("--set", value)]


def _install(kube: Kube, *extra: str, upgrade: bool = False) -> None:
    verb = ["upgrade", "--reuse-values"] if upgrade else ["upgrade", "--install"]
    kube.helm(
        *verb,
        RELEASE,
        str(CHART),
        "--namespace",
        NS,
        *_values(kube, *extra),
        "--wait",
        "--timeout",
        "6m",
    )


def operator_pod_ready(kube: Kube, not_uid: str | None = None) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        pod = kube.get("pod", "-n", NS, POD)
        if pod is None or pod["metadata"]["uid"] == not_uid:
            return None
        if pod["metadata"].get("deletionTimestamp"):
            return None
        cond = kube.condition(pod, "Ready")
        return pod if cond and cond.get("status") == "True" else None

    return wait_for(
        f"operator pod {NS}/{POD} Ready",
        ready,
        timeout=360,
        report=lambda: kube.describe("pod", NS, POD) + _operator_logs(kube),
    )


def _operator_logs(kube: Kube) -> str:
    out = kube.kubectl("logs", "-n", NS, POD, "--tail=40", check=False)
    return "\n--- operator log ---\n" + (out.stdout or out.stderr)


@pytest.fixture(scope="module")
def release(kube: Kube) -> Iterator[Kube]:
    kube.create_namespace(NS, restricted=True)
    _install(kube)
    for namespace in (APP, API):
        kube.create_namespace(namespace, restricted=True)
    yield kube
    kube.helm("uninstall", RELEASE, "--namespace", NS, "--wait", check=False)


def test_operator_pod_becomes_ready_under_restricted_pod_security(release: Kube) -> None:
    kube = release
    namespace = kube.get("namespace", NS)
    assert namespace is not None
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = operator_pod_ready(kube)
    container = next(c for c in pod["spec"]["containers"] if c["name"] == "operator")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["runAsUser"] == 65532
    assert container["image"].endswith(kube.image)
    status = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "operator")
    assert status["ready"] is True and status["restartCount"] == 0
    pvc = kube.get("pvc", "-n", NS, PVC)
    assert pvc is not None and pvc["status"]["phase"] == "Bound"
    STATE["pvc_uid"] = pvc["metadata"]["uid"]


def _import_material(kube: Kube, namespace: str, kmi: str, secret: str) -> None:
    """The steps of cmk-external-with-import.yaml: wrap 32 fresh bytes to the wrapping key."""
    obj = wait_for(
        f"KeyMaterialImport {namespace}/{kmi} parameters",
        lambda: (
            (o := kube.get("kmi", "-n", namespace, kmi))
            and o.get("status", {}).get("wrappingPublicKey")
            and o
        ),
    )
    public = serialization.load_pem_public_key(obj["status"]["wrappingPublicKey"].encode())
    assert isinstance(public, rsa.RSAPublicKey)
    wrapped = public.encrypt(
        os.urandom(32),
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    kube.apply(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": secret},
            "data": {"encryptedKeyMaterial": base64.b64encode(wrapped).decode()},
        },
    )
    patch = {
        "spec": {
            "importToken": obj["status"]["importToken"],
            "encryptedKeyMaterialSecretRef": {"name": secret, "key": "encryptedKeyMaterial"},
        }
    }
    kube.kubectl("patch", "kmi", "-n", namespace, kmi, "--type", "merge", "-p", json.dumps(patch))


def test_every_example_applies_and_becomes_ready(release: Kube) -> None:
    kube = release
    namespace = "kms-e2e-examples"
    kube.create_namespace(namespace, restricted=True)
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert files, f"no examples in {EXAMPLES}"
    objects: list[tuple[str, str]] = []
    for path in files:
        kube.kubectl("apply", "-n", namespace, "-f", str(path))
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                objects.append((doc["kind"].lower(), doc["metadata"]["name"]))
    for kind, name in objects:
        if kind == "keymaterialimport":
            _import_material(kube, namespace, name, f"{name}-material")
    for kind, name in objects:
        obj = kube.wait_ready(kind, namespace, name)
        if kind == "customermasterkey":
            assert obj["status"]["state"] == "Enabled", obj["status"]
        if kind == "keymaterialimport":
            assert obj["status"]["phase"] == "Imported", obj["status"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _secret_key_env(secret: str, key: str, name: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


HASH_FILES = """set -e
python3 - <<'PY'
import hashlib
for name in ("plaintext", "ciphertext"):
    print("FILE", name, hashlib.sha256(open("/etc/dek/" + name, "rb").read()).hexdigest())
PY
"""

HASH_ENV = """set -e
python3 - <<'PY'
import base64, hashlib, os
for name in ("plaintext", "ciphertext"):
    value = base64.b64decode(os.environ["DEK_" + name.upper()], validate=True)
    print("ENV", name, hashlib.sha256(value).hexdigest())
PY
"""


def _hashes(logs: str, prefix: str) -> dict[str, str]:
    return {
        parts[1]: parts[2]
        for parts in (line.split() for line in logs.splitlines())
        if len(parts) == 3 and parts[0] == prefix
    }


def test_pod_reads_a_datakey_secret_as_a_volume(release: Kube) -> None:
    kube = release
    dk = scenarios.datakey(kube, APP, "app-dek", keySpec="AES_256")
    secret_name = dk["status"]["secretName"]
    data = kube.secret_data(APP, secret_name)
    assert len(data["plaintext"]) == 32 and data["ciphertext"].startswith(b"KMS1")
    phase, logs = kube.run_pod(
        APP,
        HASH_FILES,
        volumes=[{"name": "dek", "secret": {"secretName": secret_name}}],
        mounts=[{"name": "dek", "mountPath": "/etc/dek", "readOnly": True}],
    )
    assert phase == "Succeeded", logs
    assert _hashes(logs, "FILE") == {
        "plaintext": _sha(data["plaintext"]),
        "ciphertext": _sha(data["ciphertext"]),
    }


def test_pod_reads_a_datakey_secret_as_environment_variables(release: Kube) -> None:
    kube = release
    dk = scenarios.datakey(kube, APP, "app-dek", keySpec="AES_256")
    secret_name = dk["status"]["secretName"]
    data = kube.secret_data(APP, secret_name)
    phase, logs = kube.run_pod(
        APP,
        HASH_ENV,
        env=[
            # Raw bytes cannot be environment variables: the Secret's text forms can.
            _secret_key_env(secret_name, "plaintextBase64", "DEK_PLAINTEXT"),
            _secret_key_env(secret_name, "ciphertextBase64", "DEK_CIPHERTEXT"),
        ],
    )
    assert phase == "Succeeded", logs
    assert _hashes(logs, "ENV") == {
        "plaintext": _sha(data["plaintext"]),
        "ciphertext": _sha(data["ciphertext"]),
    }


def test_pod_calls_the_api_through_the_service_and_a_stranger_is_refused(release: Kube) -> None:
    kube = release
    scenarios.cmk(kube, API, "app-key")
    scenarios.grant(kube, API, "writer", "app-key", ["encrypt", "decrypt"])
    scenarios.grant(kube, API, "stranger", "app-key", [])
    scenarios.publish_ca(kube, NS, CA_CONFIGMAP, API)
    plaintext = b"e2e through the Service " + os.urandom(8).hex().encode()
    blob = scenarios.encrypt_in_pod(
        kube, API, "writer", server=SERVER, key="app-key", plaintext=plaintext
    )
    assert blob.startswith(b"KMS1")
    scenarios.refused_in_pod(kube, API, "stranger", SERVER, "app-key")
    STATE["blob"], STATE["plaintext"] = blob, plaintext


def test_deleting_a_datakey_deletes_its_secret_through_the_garbage_collector(
    release: Kube,
) -> None:
    kube = release
    dk = scenarios.datakey(kube, APP, "gc-dek", keySpec="AES_128")
    name = dk["status"]["secretName"]
    secret = kube.get("secret", "-n", APP, name)
    assert secret is not None
    owners = secret["metadata"].get("ownerReferences", [])
    assert [(o["kind"], o["uid"], o.get("controller")) for o in owners] == [
        ("DataKey", dk["metadata"]["uid"], True)
    ]
    kube.kubectl("delete", "datakey", "-n", APP, "gc-dek", "--wait=true")
    wait_for(f"Secret {APP}/{name} collected", lambda: kube.get("secret", "-n", APP, name) is None)


def test_namespace_deletion_schedules_its_keys_and_a_new_namespace_gets_new_keys(
    release: Kube,
) -> None:
    """Security issue, item 1: a namespace's keys (default key included) go PendingDeletion
    with their dates, the namespace waits for them, and a re-created namespace of the same
    name never gets the old keys."""
    kube = release
    kube.create_namespace(DOOMED, restricted=True)
    scenarios.cmk(kube, DOOMED, "doomed-key", pendingWindowDays=7)
    scenarios.datakey(kube, DOOMED, "doomed-dk")  # creates the default key
    old = scenarios.key_ids(kube, DOOMED)
    assert set(old) == {"doomed-key", "kms-default-datakeys"} and all(old.values()), old

    kube.kubectl("delete", "namespace", DOOMED, "--wait=false")

    def all_pending() -> dict[str, Any] | None:
        listing = kube.get("cmk", "-n", DOOMED) or {"items": []}
        states = {i["metadata"]["name"]: i.get("status", {}) for i in listing["items"]}
        if set(states) == set(old) and all(
            s.get("state") == "PendingDeletion" and s.get("deletionDate") for s in states.values()
        ):
            return states
        return None

    states = wait_for(
        "every key of the deleted namespace PendingDeletion with a date",
        all_pending,
        timeout=120,
        report=lambda: json.dumps(scenarios.key_ids(kube, DOOMED)),
    )
    assert {name: s["keyId"] for name, s in states.items()} == old
    namespace = kube.get("namespace", DOOMED)
    assert namespace is not None and namespace["status"]["phase"] == "Terminating"

    # The default key keeps the default window (30 days), the user key its 7: the namespace
    # goes once the longer one has passed.
    wait_for(
        f"namespace {DOOMED} gone once its keys are destroyed",
        lambda: kube.get("namespace", DOOMED) is None,
        timeout=DEFAULT_PENDING_WINDOW_DAYS * DAY_SECONDS + 240,
    )

    kube.create_namespace(DOOMED, restricted=True)
    scenarios.cmk(kube, DOOMED, "doomed-key", pendingWindowDays=7)
    dk = scenarios.datakey(kube, DOOMED, "doomed-dk")
    new = scenarios.key_ids(kube, DOOMED)
    assert set(new) == set(old)
    for name in old:
        assert new[name] != old[name], f"{name} got the deleted namespace's key {old[name]}"
    assert dk["status"]["keyId"] == new["kms-default-datakeys"]


def test_keys_survive_pod_deletion_upgrade_uninstall_and_reinstall(release: Kube) -> None:
    kube = release
    if "blob" not in STATE:
        pytest.fail("needs the blob of the API test (run the module in order)", pytrace=False)
    blob, plaintext = STATE["blob"], STATE["plaintext"]
    before = {ns: scenarios.key_ids(kube, ns) for ns in (API, APP)}
    pod = operator_pod_ready(kube)

    def same_keys(step: str) -> None:
        operator_pod_ready(kube)
        for ns, ids in before.items():
            for name in ids:
                kube.wait_ready("cmk", ns, name)
            assert scenarios.key_ids(kube, ns) == ids, step
        scenarios.decrypt_in_pod(kube, API, "writer", server=SERVER, blob=blob, plaintext=plaintext)
        pvc = kube.get("pvc", "-n", NS, PVC)
        assert pvc is not None and pvc["metadata"]["uid"] == STATE["pvc_uid"], step

    kube.kubectl("delete", "pod", "-n", NS, POD, "--wait=false")
    operator_pod_ready(kube, not_uid=pod["metadata"]["uid"])
    same_keys("after the pod was deleted")

    pod = operator_pod_ready(kube)
    _install(kube, "logging.level=DEBUG", upgrade=True)
    operator_pod_ready(kube, not_uid=pod["metadata"]["uid"])
    same_keys("after helm upgrade")

    root_key = kube.get("secret", "-n", NS, f"{RELEASE}-root-key")
    assert root_key is not None
    kube.helm("uninstall", RELEASE, "--namespace", NS, "--wait")
    wait_for("operator pod gone", lambda: kube.get("pod", "-n", NS, POD) is None)
    for crd in ("customermasterkeys", "keymaterialimports", "datakeys"):
        assert kube.get("crd", f"{crd}.kms.cmk.dev") is not None, crd
    kept = kube.get("secret", "-n", NS, f"{RELEASE}-root-key")
    assert kept is not None and kept["metadata"]["uid"] == root_key["metadata"]["uid"]
    assert kept["data"] == root_key["data"]
    pvc = kube.get("pvc", "-n", NS, PVC)
    assert pvc is not None and pvc["metadata"]["uid"] == STATE["pvc_uid"]

    _install(kube)
    same_keys("after uninstall and re-install")

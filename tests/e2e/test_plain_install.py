"""The plain ``manifests/install`` YAML (the chart rendered with its defaults) gives the same
result as the chart: the operator pod Ready under the ``restricted`` Pod Security level, keys,
DataKeys, and the API through its Service with the published CA.

Runs after test_chart.py has uninstalled its release (two operators must not serve the same
keys); only the image reference and its pull policy are changed in the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e import scenarios
from tests.e2e.kube import Kube, wait_for

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "manifests" / "install" / "kms-operator.yaml"
NS = "kms-system"
SERVER = f"https://kms-operator.{NS}.svc:8443"
WORKLOAD = "kms-e2e-plain"
PUBLISHED_IMAGE = "ghcr.io/kms-operator/kms-operator:0.1.0"


@pytest.fixture(scope="module")
def plain(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    text = MANIFEST.read_text()
    assert PUBLISHED_IMAGE in text, "the rendered manifest names another image"
    text = text.replace(PUBLISHED_IMAGE, kube.image).replace(
        "imagePullPolicy: IfNotPresent", f"imagePullPolicy: {kube.pull_policy}"
    )
    # manifests/install/README.md: the namespace and the root key Secret come first.
    kube.kubectl("create", "namespace", NS, check=False)
    key = tmp_path_factory.mktemp("rootkey") / "root.key"
    key.write_bytes(os.urandom(32))
    kube.kubectl(
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        "kms-operator-root-key",
        f"--from-file=root.key={key}",
        check=False,
    )
    key.unlink()
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=text)
    yield kube
    kube.kubectl("delete", "statefulset", "-n", NS, "kms-operator", "--wait=true", check=False)


def test_plain_install_runs_the_operator_like_the_chart(plain: Kube) -> None:
    kube = plain
    namespace = kube.get("namespace", NS)
    assert namespace is not None
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"

    def pod_ready() -> bool:
        cond = kube.condition(kube.get("pod", "-n", NS, "kms-operator-0"), "Ready")
        return cond is not None and cond["status"] == "True"

    wait_for(
        "kms-system/kms-operator-0 Ready",
        pod_ready,
        timeout=360,
        report=lambda: kube.describe("pod", NS, "kms-operator-0"),
    )

    kube.create_namespace(WORKLOAD, restricted=True)
    scenarios.cmk(kube, WORKLOAD, "plain-key")
    dk = scenarios.datakey(kube, WORKLOAD, "plain-dek", keyRef={"name": "plain-key"})
    assert kube.secret_data(WORKLOAD, dk["status"]["secretName"])["ciphertext"].startswith(b"KMS1")
    scenarios.grant(kube, WORKLOAD, "writer", "plain-key", ["encrypt", "decrypt"])
    scenarios.grant(kube, WORKLOAD, "stranger", "plain-key", [])
    scenarios.publish_ca(kube, NS, "kms-operator-ca", WORKLOAD)
    blob = scenarios.encrypt_in_pod(
        kube, WORKLOAD, "writer", server=SERVER, key="plain-key", plaintext=b"plain install"
    )
    assert blob.startswith(b"KMS1")
    scenarios.refused_in_pod(kube, WORKLOAD, "stranger", SERVER, "plain-key")

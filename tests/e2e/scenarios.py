"""Steps shared by the e2e tests of the chart and of the plain install: keys, RBAC and pods
that call the API through its Service with the published CA."""

from __future__ import annotations

import base64
from typing import Any

from tests.e2e.kube import Kube, wait_for

AUDIENCE = "kms.cmk.dev"


def cmk(kube: Kube, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    kube.apply(
        namespace,
        {
            "apiVersion": "kms.cmk.dev/v1alpha1",
            "kind": "CustomerMasterKey",
            "metadata": {"name": name},
            "spec": {"description": "e2e", **spec},
        },
    )
    return kube.wait_ready("cmk", namespace, name)


def datakey(kube: Kube, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    kube.apply(
        namespace,
        {
            "apiVersion": "kms.cmk.dev/v1alpha1",
            "kind": "DataKey",
            "metadata": {"name": name},
            "spec": spec,
        },
    )
    return kube.wait_ready("datakey", namespace, name)


def grant(kube: Kube, namespace: str, account: str, key: str, verbs: list[str]) -> None:
    """A ServiceAccount and a Role on one CMK (the README's plain-RBAC grant)."""
    kube.apply(
        namespace, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}}
    )
    if not verbs:
        return
    kube.apply(
        namespace,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": f"{account}-kms"},
            "rules": [
                {
                    "apiGroups": ["kms.cmk.dev"],
                    "resources": ["customermasterkeys"],
                    "resourceNames": [key],
                    "verbs": verbs,
                }
            ],
        },
    )
    kube.apply(
        namespace,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"{account}-kms"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": f"{account}-kms",
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    )


def publish_ca(kube: Kube, operator_namespace: str, ca_configmap: str, namespace: str) -> None:
    """Copy the CA the operator publishes into the workload's namespace (a ConfigMap volume
    can only come from the pod's own namespace)."""
    published = wait_for(
        f"ConfigMap {operator_namespace}/{ca_configmap}",
        lambda: kube.get("configmap", "-n", operator_namespace, ca_configmap),
    )
    kube.apply(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kms-ca"},
            "data": published["data"],
        },
    )


def kmsctl_pod(
    kube: Kube, namespace: str, account: str, server: str, script: str, *, ca_key: str = "ca.crt"
) -> tuple[str, str]:
    """Run ``script`` in a pod of ``account`` with a projected token of the KMS audience and
    the published CA; KMS_SERVER, KMS_CA_FILE and KMS_TOKEN_FILE are set for kmsctl."""
    volume = {
        "name": "kms",
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": AUDIENCE,
                        "expirationSeconds": 3600,
                        "path": "token",
                    }
                },
                {"configMap": {"name": "kms-ca", "items": [{"key": ca_key, "path": "ca.crt"}]}},
            ]
        },
    }
    env = [
        {"name": "KMS_SERVER", "value": server},
        {"name": "KMS_CA_FILE", "value": "/var/run/kms/ca.crt"},
        {"name": "KMS_TOKEN_FILE", "value": "/var/run/kms/token"},
    ]
    return kube.run_pod(
        namespace,
        script,
        service_account=account,
        volumes=[volume],
        mounts=[{"name": "kms", "mountPath": "/var/run/kms", "readOnly": True}],
        env=env,
    )


def encrypt_in_pod(
    kube: Kube, namespace: str, account: str, *, server: str, key: str, plaintext: bytes
) -> bytes:
    """Encrypt and decrypt inside a pod; returns the blob (the plaintext is test data)."""
    script = f"""set -e
printf '%s' '{base64.b64encode(plaintext).decode()}' | base64 -d > /tmp/p
kmsctl encrypt -n {namespace} --key {key} --context e2e=yes --plaintext-file /tmp/p -o /tmp/blob
kmsctl decrypt --context e2e=yes -o /tmp/out < /tmp/blob
cmp -s /tmp/p /tmp/out && echo ROUNDTRIP-OK
echo "BLOB $(base64 -w0 /tmp/blob)"
"""
    phase, logs = kmsctl_pod(kube, namespace, account, server, script)
    assert phase == "Succeeded" and "ROUNDTRIP-OK" in logs, logs
    line = next(x for x in logs.splitlines() if x.startswith("BLOB "))
    return base64.b64decode(line.removeprefix("BLOB "))


def decrypt_in_pod(
    kube: Kube, namespace: str, account: str, *, server: str, blob: bytes, plaintext: bytes
) -> None:
    script = f"""set -e
printf '%s' '{base64.b64encode(blob).decode()}' | base64 -d > /tmp/blob
printf '%s' '{base64.b64encode(plaintext).decode()}' | base64 -d > /tmp/p
kmsctl decrypt --context e2e=yes -o /tmp/out < /tmp/blob
cmp -s /tmp/p /tmp/out && echo DECRYPT-OK
"""
    phase, logs = kmsctl_pod(kube, namespace, account, server, script)
    assert phase == "Succeeded" and "DECRYPT-OK" in logs, logs


def refused_in_pod(kube: Kube, namespace: str, account: str, server: str, key: str) -> str:
    """An encrypt by ``account`` must be refused; returns kmsctl's error line."""
    script = f"""printf 'x' > /tmp/p
if kmsctl encrypt -n {namespace} --key {key} --plaintext-file /tmp/p -o /tmp/blob 2>/tmp/err
then echo UNEXPECTED-SUCCESS; else echo "REFUSED $(cat /tmp/err)"; fi
"""
    phase, logs = kmsctl_pod(kube, namespace, account, server, script)
    assert phase == "Succeeded", logs
    assert "UNEXPECTED-SUCCESS" not in logs, logs
    line = next((x for x in logs.splitlines() if x.startswith("REFUSED ")), "")
    assert "AccessDenied" in line, logs
    return line


def key_ids(kube: Kube, namespace: str) -> dict[str, str]:
    listing = kube.get("cmk", "-n", namespace) or {}
    return {
        item["metadata"]["name"]: item.get("status", {}).get("keyId", "")
        for item in listing.get("items", [])
    }

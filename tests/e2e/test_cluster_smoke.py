"""The e2e cluster itself: a Ready node, and a pod that resolves Service names through the
cluster's DNS and reaches the API server through the ``kubernetes`` Service."""

from __future__ import annotations

from tests.e2e.kube import Kube, wait_for

PROBE = """set -e
python3 - <<'PY'
import json, socket, ssl, urllib.request
print("RESOLVED", socket.gethostbyname("kubernetes.default.svc.cluster.local"))
host = "kubernetes.default.svc"  # through the search path; the serving certificate's name
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
req = urllib.request.Request(f"https://{host}/version")
with urllib.request.urlopen(req, context=ctx, timeout=20) as answer:
    print("VERSION", json.load(answer)["gitVersion"])
PY
"""


def test_node_is_ready(kube: Kube) -> None:
    def ready_nodes() -> list[str] | None:
        nodes = (kube.get("nodes") or {}).get("items", [])
        names = [
            n["metadata"]["name"]
            for n in nodes
            if (c := kube.condition(n, "Ready")) is not None and c["status"] == "True"
        ]
        return names or None

    assert wait_for("a Ready node", ready_nodes)


def test_pod_resolves_services_and_reaches_the_api_server(kube: Kube) -> None:
    kube.create_namespace("kms-e2e-smoke", restricted=True)
    wait_for(
        "default ServiceAccount",
        lambda: kube.get("serviceaccount", "-n", "kms-e2e-smoke", "default"),
    )
    phase, logs = kube.run_pod("kms-e2e-smoke", PROBE)
    assert phase == "Succeeded", logs
    service = kube.get("service", "-n", "default", "kubernetes")
    assert service is not None
    assert f"RESOLVED {service['spec']['clusterIP']}" in logs, logs
    assert "VERSION v1." in logs, logs

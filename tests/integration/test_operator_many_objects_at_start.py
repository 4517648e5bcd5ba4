"""More CustomerMasterKeys at start-up than ``--max-workers`` (found with issue 8's work).

A Kopf index on CustomerMasterKeys (aliases, for the webhook) held every handler until the
index had seen every object, while the objects waiting for it held all the worker slots: with
more existing objects than ``--max-workers`` (the chart's default is 20) the operator started
and then did nothing, for good. Admission now asks the store who holds an alias.

The operator serves only the test's namespace, so objects other tests left in the shared
control plane do not compete for its three workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from tests.integration.operator_fixtures import Cmks, OperatorProcess, wait_for

from kms_operator.devcluster.controlplane import LocalControlPlane

COUNT = 12


@pytest.fixture
def operator_of_namespace(
    control_plane: LocalControlPlane, crds_installed: list[str], namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        control_plane, tmp_path, 2, ("--max-workers", "3", "--namespace", namespace)
    )
    try:
        yield process
    finally:
        process.stop()
        process.kill()


def test_existing_objects_beyond_the_worker_limit_are_all_served(
    operator_of_namespace: OperatorProcess, cmks: Cmks, namespace: str, kube_api: client.ApiClient
) -> None:
    for index in range(COUNT):
        cmks.create(namespace, f"key-{index:02d}", {"aliases": [f"alias/many/{index}"]})
    operator_of_namespace.start()

    def enabled() -> int:
        items = client.CustomObjectsApi(kube_api).list_namespaced_custom_object(
            "kms.cmk.dev", "v1alpha1", namespace, "customermasterkeys"
        )["items"]
        return sum((i.get("status") or {}).get("state") == "Enabled" for i in items)

    wait_for(lambda: enabled() == COUNT, timeout=60, what=f"all {COUNT} keys Enabled")

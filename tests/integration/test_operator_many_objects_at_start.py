"""More CustomerMasterKeys at start-up than ``--max-workers`` (found with issue 8's work).

A Kopf index on CustomerMasterKeys (aliases, for the webhook) held every handler until the
index had seen every object, while the objects waiting for it held all the worker slots: with
more existing objects than ``--max-workers`` (the chart's default is 20) the operator started
and then did nothing, for good. Admission now asks the store who holds an alias.
"""

from __future__ import annotations

from kubernetes import client
from tests.integration.operator_fixtures import Cmks, OperatorProcess, wait_for

OPERATOR_EXTRA_ARGS = ("--max-workers", "3")
COUNT = 12


def test_existing_objects_beyond_the_worker_limit_are_all_served(
    operator_process: OperatorProcess, cmks: Cmks, namespace: str, kube_api: client.ApiClient
) -> None:
    operator_process.stop()
    for index in range(COUNT):
        cmks.create(namespace, f"key-{index:02d}", {"aliases": [f"alias/many/{index}"]})
    operator_process.start()

    def enabled() -> int:
        items = client.CustomObjectsApi(kube_api).list_namespaced_custom_object(
            "kms.cmk.dev", "v1alpha1", namespace, "customermasterkeys"
        )["items"]
        return sum((i.get("status") or {}).get("state") == "Enabled" for i in items)

    wait_for(lambda: enabled() == COUNT, timeout=60, what=f"all {COUNT} keys Enabled")

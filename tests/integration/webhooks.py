"""The ValidatingWebhookConfiguration as the chart creates it (webhook.enabled), for tests that
run the operator without the chart: created empty; the operator fills in its webhook (patch
only, no create) and empties it on stop."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.integration.operator_fixtures import wait_for

from kms_operator.contract import WEBHOOK_CONFIGURATION


@contextlib.contextmanager
def chart_webhook_configuration(kube_api: client.ApiClient) -> Iterator[None]:
    api = client.AdmissionregistrationV1Api(kube_api)
    with contextlib.suppress(ApiException):
        api.delete_validating_webhook_configuration(WEBHOOK_CONFIGURATION)
    api.create_validating_webhook_configuration(
        client.V1ValidatingWebhookConfiguration(
            metadata=client.V1ObjectMeta(name=WEBHOOK_CONFIGURATION), webhooks=[]
        )
    )
    try:
        yield
    finally:
        api.delete_validating_webhook_configuration(WEBHOOK_CONFIGURATION)


def webhooks(kube_api: client.ApiClient) -> list[dict[str, Any]]:
    found = client.AdmissionregistrationV1Api(kube_api).read_validating_webhook_configuration(
        WEBHOOK_CONFIGURATION
    )
    serialized: dict[str, Any] = kube_api.sanitize_for_serialization(found)
    return list(serialized.get("webhooks") or [])


def wait_for_webhook(kube_api: client.ApiClient) -> dict[str, Any]:
    """The operator's webhook, once it has patched it in."""
    (entry,) = wait_for(lambda: webhooks(kube_api), timeout=60, what="the webhook patched in")
    return dict(entry)


def ca_bundle(entry: dict[str, Any]) -> bytes:
    return base64.b64decode(entry["clientConfig"]["caBundle"])

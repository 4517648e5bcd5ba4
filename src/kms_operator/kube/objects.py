"""Reads and writes of our custom resources, Events and owned objects (sync client calls)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kms_operator.contract import API_VERSION, CMK_PLURAL, GROUP, MANAGED_BY, VERSION
from kms_operator.errors import KmsError

Body = dict[str, Any]


@dataclass(frozen=True)
class NamespaceInfo:
    """What binding a key needs of its namespace: the UID, and whether it is being deleted."""

    uid: str
    terminating: bool


class CrdNotInstalled(KmsError):
    """Our CustomResourceDefinitions are missing from the cluster."""


class WebhookConfigurationMissing(KmsError):
    """The ValidatingWebhookConfiguration the operator fills in does not exist."""

    retryable = True


class Objects:
    """The operator's writes outside Kopf handlers: scheduler, cancellations, drift reports."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._admission = client.AdmissionregistrationV1Api(api_client)

    def namespace_info(self, namespace: str) -> NamespaceInfo | None:
        """The namespace's UID and whether it is terminating; None when it does not exist."""
        try:
            found = self._core.read_namespace(namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        meta, status = found.metadata, found.status
        assert meta is not None  # the API server always sends metadata
        terminating = meta.deletion_timestamp is not None or (
            status is not None and status.phase == "Terminating"
        )
        return NamespaceInfo(uid=str(meta.uid), terminating=terminating)

    def get_cmk(self, namespace: str, name: str) -> Body | None:
        try:
            body = cast(
                Body,
                self._custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, CMK_PLURAL, name
                ),
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return body

    def list_cmks(self, namespace: str | None = None) -> list[Body]:
        try:
            if namespace is None:
                answer = self._custom.list_cluster_custom_object(GROUP, VERSION, CMK_PLURAL)
            else:
                answer = self._custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, CMK_PLURAL
                )
        except ApiException as exc:
            if exc.status == 404:
                raise CrdNotInstalled(
                    f"the API server does not serve {CMK_PLURAL}.{GROUP}/{VERSION}: install the "
                    "CRDs first (kubectl apply -f crds/, or the Helm chart)"
                ) from None
            raise
        return list(cast(Body, answer).get("items", []))

    def create_cmk(self, namespace: str, body: Body) -> Body:
        return cast(
            Body,
            self._custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, CMK_PLURAL, body
            ),
        )

    def patch_cmk(self, namespace: str, name: str, body: Body) -> Body:
        return cast(
            Body,
            self._custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, CMK_PLURAL, name, body
            ),
        )

    def patch_cmk_status(self, namespace: str, name: str, status: Body) -> None:
        self._custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, CMK_PLURAL, name, {"status": status}
        )

    def remove_finalizer(self, body: Body, finalizer: str) -> bool:
        """Drop ``finalizer`` with a resourceVersion precondition; False if already gone.

        On a conflict (the object changed since ``body`` was read) the same object (same UID)
        is read again and the removal retried, a few times.
        """
        uid = body["metadata"].get("uid")
        for _ in range(3):
            meta = body["metadata"]
            finalizers = list(meta.get("finalizers") or [])
            if finalizer not in finalizers:
                return False
            finalizers.remove(finalizer)
            try:
                self._custom.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    meta["namespace"],
                    CMK_PLURAL,
                    meta["name"],
                    {
                        "metadata": {
                            "finalizers": finalizers,
                            "resourceVersion": meta["resourceVersion"],
                        }
                    },
                )
            except ApiException as exc:
                if exc.status == 404:
                    return False
                if exc.status != 409:
                    raise
                fresh = self.get_cmk(meta["namespace"], meta["name"])
                if fresh is None or fresh["metadata"].get("uid") != uid:
                    return False
                body = fresh
                continue
            return True
        raise KmsError(
            f"{body['metadata']['namespace']}/{body['metadata']['name']} kept changing while "
            f"{finalizer} was being removed"
        )

    def patch_validating_webhooks(self, name: str, webhooks: list[Body]) -> None:
        """Replace the ``webhooks`` of the ValidatingWebhookConfiguration ``name`` (patch only:
        the operator may neither create nor delete webhook configurations)."""
        try:
            self._admission.patch_validating_webhook_configuration(
                name, {"webhooks": webhooks}, _content_type="application/merge-patch+json"
            )
        except ApiException as exc:
            if exc.status == 404:
                raise WebhookConfigurationMissing(
                    f"ValidatingWebhookConfiguration {name} does not exist: the Helm chart "
                    "creates it with webhook.enabled=true (without the chart, create it with "
                    "no webhooks; the operator fills them in)"
                ) from None
            raise

    def post_event_on(
        self,
        kind: str,
        namespace: str,
        name: str,
        uid: str | None,
        *,
        type_: str,
        reason: str,
        message: str,
    ) -> None:
        """A core/v1 Event on one of our objects of ``kind`` (which may no longer exist: drift
        reports), from the ``kms-operator`` component."""
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{name}.", namespace=namespace),
            involved_object=client.V1ObjectReference(
                api_version=API_VERSION, kind=kind, name=name, namespace=namespace, uid=uid
            ),
            type=type_,
            reason=reason,
            message=message[:1024],
            source=client.V1EventSource(component=MANAGED_BY),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            reporting_component=MANAGED_BY,
        )
        self._core.create_namespaced_event(namespace, event)

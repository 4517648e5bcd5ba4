"""The operator's one Kopf registry, its login and its settings (DESIGN.md section 7)."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kms_operator.api.tls import ServingTls
from kms_operator.kube.client import ConnectionParameters
from kms_operator.kube.objects import GROUP
from kms_operator.settings import Settings

KOPF_PREFIX = f"kopf.{GROUP}"

registry = kopf.OperatorRegistry()


@kopf.on.login(registry=registry)
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """The same cluster and identity as our own client (explicit kubeconfig or in-cluster)."""
    params: ConnectionParameters = memo.runtime.connection
    return kopf.ConnectionInfo(
        server=params.server,
        ca_path=params.ca_path,
        insecure=params.insecure,
        scheme=params.scheme,
        token=params.token,
        certificate_path=params.certificate_path,
        private_key_path=params.private_key_path,
    )


def operator_settings(
    config: Settings, webhook_tls: ServingTls | None = None
) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Our prefix everywhere (DESIGN.md section 7): Kopf's own finalizer is never added since
    # no deletion handler is registered, but it must not use Kopf's name if it ever is.
    settings.persistence.finalizer = "kms.cmk.dev/kopf-finalizer"
    # A sub-domain, not GROUP itself: Kopf leaves every annotation under its storage prefix
    # out of the diff, and our users' kms.cmk.dev/rotate must count as a change.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    settings.watching.server_timeout = config.watch_server_timeout
    settings.watching.client_timeout = config.watch_client_timeout
    settings.watching.connect_timeout = 30
    # A per-object worker holds its slot while idle; Kopf's default 5 s idle time with a
    # bounded pool would admit only worker_limit objects every 5 s.
    settings.batching.worker_limit = config.max_workers
    settings.batching.idle_timeout = 0.5
    # Kopf's own per-handler log lines stay logs; our Events are posted with kopf.event()
    # (kopf.info() would be filtered by this level too).
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 8  # threads for sync handlers; ours are async
    if webhook_tls is not None:
        settings.admission.server = kopf.WebhookServer(
            addr=config.api_host,
            port=config.webhook_port,
            host=config.webhook_host
            or f"{config.api_service_name}.{config.operator_namespace}.svc",
            certfile=str(webhook_tls.cert_file),
            pkeyfile=str(webhook_tls.key_file),
            cadata=webhook_tls.ca_pem,
        )
        settings.admission.managed = GROUP
    return settings

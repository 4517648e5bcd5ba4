"""The operator's one Kopf registry, its login and its settings (DESIGN.md section 7)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import kopf

from kms_operator.contract import KOPF_FINALIZER, KOPF_PREFIX, WEBHOOK_CONFIGURATION
from kms_operator.kube.client import ConnectionParameters
from kms_operator.serving.tls import ServingTls
from kms_operator.settings import Settings

from .scheduling import Backoff

log = logging.getLogger(__name__)

registry = kopf.OperatorRegistry()

#: Writes the webhook's client config (address and CA) into the webhook configuration; None
#: removes the operator's webhooks (on shutdown). Synchronous: called in a thread.
ConfigureWebhooks = Callable[[Mapping[str, Any] | None], None]


class ConfiguringWebhookServer(kopf.WebhookServer):
    """Kopf's webhook server that also points the chart's ValidatingWebhookConfiguration at
    itself, with ``patch`` only.

    Kopf's own management (``settings.admission.managed``) first *creates* the configuration
    (a 403 on create stops the operator, even when the object exists) and also manages a
    MutatingWebhookConfiguration: rights the operator does not hold. A failed patch (the
    configuration missing, the API server away) is logged and retried with back-off; the
    webhook's ``failurePolicy: Ignore`` lets requests pass meanwhile.
    """

    def __init__(
        self, *, configure: ConfigureWebhooks, backoff: Backoff | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._configure = configure
        self._backoff = backoff or Backoff(first=1.0, cap=60.0)

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        applying: asyncio.Task[None] | None = None
        try:
            async for client_config in super().__call__(fn):
                if applying is not None:
                    applying.cancel()
                applying = asyncio.create_task(self._apply(dict(client_config)))
                yield client_config
        finally:
            if applying is not None:
                applying.cancel()
                with contextlib.suppress(Exception):
                    # Stopped: the API server should not call a webhook that is gone.
                    await asyncio.wait_for(asyncio.to_thread(self._configure, None), 5)

    async def _apply(self, client_config: Mapping[str, Any]) -> None:
        failures = 0
        while True:
            try:
                await asyncio.to_thread(self._configure, client_config)
            except Exception as exc:
                failures += 1
                delay = self._backoff.delay(failures)
                log.warning(
                    "could not configure the ValidatingWebhookConfiguration %s (%s); "
                    "retrying in %g s",
                    WEBHOOK_CONFIGURATION,
                    getattr(exc, "message", None) or type(exc).__name__,
                    delay,
                )
                await self._backoff.sleep(delay)
                continue
            log.info(
                "ValidatingWebhookConfiguration %s points at %s",
                WEBHOOK_CONFIGURATION,
                client_config.get("url"),
            )
            return


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
    config: Settings,
    webhook_tls: ServingTls | None = None,
    configure_webhooks: ConfigureWebhooks | None = None,
) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Our prefix everywhere (DESIGN.md section 7): Kopf's own finalizer is never added since
    # no deletion handler is registered, but it must not use Kopf's name if it ever is.
    settings.persistence.finalizer = KOPF_FINALIZER
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
    # Kopf's own per-handler log lines stay logs (it posts Events only for handler failures);
    # ours go through operator.outcomes.post_notices.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 8  # threads for sync handlers; ours are async
    if webhook_tls is not None:
        if configure_webhooks is None:
            raise ValueError("the webhook needs configure_webhooks")
        settings.admission.server = ConfiguringWebhookServer(
            configure=configure_webhooks,
            addr=config.api_host,
            port=config.webhook_port,
            host=config.webhook_host
            or f"{config.api_service_name}.{config.operator_namespace}.svc",
            certfile=str(webhook_tls.cert_file),
            pkeyfile=str(webhook_tls.key_file),
            cadata=webhook_tls.ca_pem,
        )
        # Not Kopf's managed mode (see ConfiguringWebhookServer): it needs create rights.
        settings.admission.managed = None
    return settings

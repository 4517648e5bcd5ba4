"""Starting and stopping the API inside the operator's asyncio loop.

``kms-operator run`` calls :func:`start_api_server` once the store is open, then
:meth:`ApiServer.mark_ready` once the cache is warm, and :meth:`ApiServer.stop` on shutdown.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging

from aiohttp import web

from kms_operator.keys.service import KeyService
from kms_operator.kube import reviews
from kms_operator.kube.reviews import ApiClient
from kms_operator.settings import Settings

from . import audit, tls
from .app import create_app
from .auth import (
    Authenticator,
    Authorizer,
    StaticTokens,
    SubjectAccessReviewAuthorizer,
    TokenReviewAuthenticator,
)
from .calls import STATE

log = logging.getLogger(__name__)

_PUBLISH_ATTEMPTS = 5


class ApiServer:
    """A running API server: its URL, the CA clients trust, readiness and shutdown."""

    def __init__(
        self,
        *,
        runner: web.AppRunner,
        app: web.Application,
        url: str,
        ca_pem: bytes,
        serving: tls.ServingTls | None,
        sink: audit.AuditSink,
    ) -> None:
        self._runner = runner
        self.app = app
        self.url = url
        self.ca_pem = ca_pem
        self._serving = serving
        self._sink = sink

    def __repr__(self) -> str:
        return f"ApiServer({self.url!r}, ready={self.ready})"

    @property
    def ready(self) -> bool:
        return self.app[STATE].ready

    def mark_ready(self) -> None:
        """From now on ``/readyz`` answers 200."""
        self.app[STATE].ready = True
        log.info("API ready at %s", self.url)

    async def stop(self) -> None:
        self.app[STATE].ready = False
        await self._runner.cleanup()
        self._sink.close()
        if self._serving is not None:
            self._serving.cleanup()
        log.info("API at %s stopped", self.url)


def build_auth(
    settings: Settings, api_client: ApiClient | None
) -> tuple[Authenticator, Authorizer]:
    if settings.static_token_file is not None:
        static = StaticTokens.from_file(settings.static_token_file)
        return static, static
    if api_client is None:
        raise ValueError("the API needs a Kubernetes API client unless static_token_file is set")
    authenticator = TokenReviewAuthenticator(
        functools.partial(
            reviews.review_token, api_client, audiences=tuple(settings.token_audiences)
        ),
        settings.auth_cache_seconds,
    )

    def review_access(
        user: reviews.UserInfo, verb: str, namespace: str, name: str | None
    ) -> reviews.AccessDecision:
        return reviews.review_access(
            api_client,
            user,
            verb=verb,
            group="kms.cmk.dev",
            resource="customermasterkeys",
            namespace=namespace,
            name=name,
        )

    return authenticator, SubjectAccessReviewAuthorizer(review_access, settings.auth_cache_seconds)


def _url(host: str, port: int) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"https://{host or 'localhost'}:{port}"
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    return f"https://[{address}]:{port}" if address.version == 6 else f"https://{address}:{port}"


async def _publish_ca(api_client: ApiClient, settings: Settings, ca_pem: bytes) -> None:
    for attempt in range(1, _PUBLISH_ATTEMPTS + 1):
        try:
            await asyncio.to_thread(
                reviews.publish_ca,
                api_client,
                settings.operator_namespace,
                settings.ca_configmap,
                ca_pem,
            )
            return
        except Exception as exc:
            if attempt == _PUBLISH_ATTEMPTS:
                raise
            log.warning(
                "publishing the CA in ConfigMap %s/%s failed (%s); retrying",
                settings.operator_namespace,
                settings.ca_configmap,
                exc,
            )
            await asyncio.sleep(0.5 * 2**attempt)


async def start_api_server(
    service: KeyService,
    settings: Settings,
    api_client: ApiClient | None,
    *,
    serving: tls.ServingTls | None = None,
) -> ApiServer:
    """Serve the API over TLS on ``settings.api_host:api_port`` (port 0: any free port).

    ``serving``: a TLS identity loaded already (shared with the webhook); its owner removes
    it. Without it, one is loaded or generated here and removed on :meth:`ApiServer.stop`.
    """
    authenticator, authorizer = build_auth(settings, api_client)
    owned = serving is None
    if serving is None:
        serving = await asyncio.to_thread(tls.load_or_generate, settings)
    if serving.generated and api_client is not None:
        await _publish_ca(api_client, settings, serving.ca_pem)
    sink = audit.open_sink(settings.audit_log)
    app = create_app(service, authenticator=authenticator, authorizer=authorizer, audit=sink)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(
        runner, settings.api_host, settings.api_port, ssl_context=serving.context, backlog=512
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        sink.close()
        if owned:
            serving.cleanup()
        raise
    port = settings.api_port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            port = int(address[1])
            break
    url = _url(settings.api_host, port)
    log.info("API serving at %s (audit to %s)", url, settings.audit_log)
    return ApiServer(
        runner=runner,
        app=app,
        url=url,
        ca_pem=serving.ca_pem,
        serving=serving if owned else None,
        sink=sink,
    )

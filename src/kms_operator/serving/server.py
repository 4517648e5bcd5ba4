"""Starting and stopping the listener of the front ends (the native API, the AWS protocol)
inside the asyncio loop of ``kms-operator run``.

The composition root (:mod:`kms_operator.cli.running`) calls :func:`start_api_server` once the
store is open, then :meth:`ApiServer.mark_ready` once the cache is warm, and
:meth:`ApiServer.stop` on shutdown.

Slow clients are cut off after ``settings.request_timeout_seconds`` (T) at every stage, so a
connection costs the server a bounded time whatever the client does:

* the TLS handshake must finish within T (:class:`_TlsSite`);
* the request head must arrive within T of the connection opening or of the previous answer,
  and an idle keep-alive connection is closed after T: aiohttp arms its keep-alive timer when
  a connection opens and after each answer, and closes the connection when it fires while no
  complete request head has arrived (``keepalive_timeout=T``);
* the body must arrive within T of the head (:meth:`kms_operator.serving.calls.Call.body`:
  408 and the connection closed);
* an unread rest of a body is drained for at most :data:`LINGERING_SECONDS` after the answer.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from kms_operator.contract import GROUP
from kms_operator.keys.service import KeyService
from kms_operator.kube import reviews
from kms_operator.kube.reviews import ApiClient
from kms_operator.serving import audit, tls
from kms_operator.settings import Settings

from .app import FrontEnd, create_app
from .auth import (
    Authenticator,
    Authorizer,
    ReviewPool,
    StaticTokens,
    SubjectAccessReviewAuthorizer,
    TokenReviewAuthenticator,
)
from .calls import STATE, ReadinessCheck

log = logging.getLogger(__name__)

_PUBLISH_ATTEMPTS = 5
#: Longest time an unread body is drained after the answer, so the client can read it.
LINGERING_SECONDS = 2.0


@dataclass(frozen=True)
class Auth:
    """The authenticator and authorizer of the API, and the review pools they run on."""

    authenticator: Authenticator
    authorizer: Authorizer
    pools: tuple[ReviewPool, ...] = ()

    def close(self) -> None:
        for pool in self.pools:
            pool.close()


class _TlsSite(web.BaseSite):
    """A TCP site like :class:`aiohttp.web.TCPSite` whose TLS handshake has a time limit
    (TCPSite keeps asyncio's default of 60 s)."""

    __slots__ = ("_handshake_timeout", "_host", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        backlog: int,
        handshake_timeout: float,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._handshake_timeout = handshake_timeout

    @property
    def name(self) -> str:
        return _url(self._host, self._port)

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=self._handshake_timeout,
        )


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
        auth: Auth | None = None,
    ) -> None:
        self._runner = runner
        self.app = app
        self.url = url
        self.ca_pem = ca_pem
        self._serving = serving
        self._sink = sink
        self._auth = auth

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
        if self._auth is not None:
            self._auth.close()
        if self._serving is not None:
            self._serving.cleanup()
        log.info("API at %s stopped", self.url)


def build_auth(settings: Settings, api_client: ApiClient | None) -> Auth:
    if settings.static_token_file is not None:
        static = StaticTokens.from_file(settings.static_token_file)
        return Auth(static, static)
    if api_client is None:
        raise ValueError("the API needs a Kubernetes API client unless static_token_file is set")
    token_pool, access_pool = ReviewPool("token-review"), ReviewPool("access-review")
    authenticator = TokenReviewAuthenticator(
        functools.partial(
            reviews.review_token, api_client, audiences=tuple(settings.token_audiences)
        ),
        settings.auth_cache_seconds,
        pool=token_pool,
    )
    log.info(
        "API callers need a ServiceAccount token for audience %s",
        " or ".join(settings.token_audiences),
    )

    def review_access(
        user: reviews.UserInfo, verb: str, namespace: str, name: str | None, resource: str
    ) -> reviews.AccessDecision:
        return reviews.review_access(
            api_client,
            user,
            verb=verb,
            group=GROUP,
            resource=resource,
            namespace=namespace,
            name=name,
        )

    authorizer = SubjectAccessReviewAuthorizer(
        review_access, settings.auth_cache_seconds, pool=access_pool
    )
    return Auth(authenticator, authorizer, (token_pool, access_pool))


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
    front_ends: Sequence[FrontEnd],
    readiness_checks: Sequence[ReadinessCheck] = (),
    serving: tls.ServingTls | None = None,
) -> ApiServer:
    """Serve the front ends over TLS on ``settings.api_host:api_port`` (port 0: any free port).

    ``readiness_checks``: callables of other components, each returning None when healthy or
    a short problem text; ``/readyz`` answers 503 with the problems while any reports one.
    ``serving``: a TLS identity loaded already (shared with the webhook); its owner removes
    it. Without it, one is loaded or generated here and removed on :meth:`ApiServer.stop`.
    """
    auth = build_auth(settings, api_client)
    owned = serving is None
    try:
        if serving is None:
            serving = await asyncio.to_thread(tls.load_or_generate, settings)
    except BaseException:
        auth.close()
        raise
    try:
        if serving.generated and api_client is not None:
            await _publish_ca(api_client, settings, serving.ca_pem)
        sink = audit.open_sink(settings.audit_log)
    except BaseException:
        auth.close()
        if owned:
            serving.cleanup()
        raise
    timeout = settings.request_timeout_seconds
    app = create_app(
        service,
        front_ends=front_ends,
        authenticator=auth.authenticator,
        authorizer=auth.authorizer,
        audit=sink,
        request_timeout_seconds=timeout,
        readiness_checks=readiness_checks,
    )
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=timeout,
        lingering_time=min(LINGERING_SECONDS, timeout),
    )
    try:
        await runner.setup()
        site = _TlsSite(
            runner,
            settings.api_host,
            settings.api_port,
            ssl_context=serving.context,
            backlog=512,
            handshake_timeout=timeout,
        )
        await site.start()
    except BaseException:
        await runner.cleanup()
        sink.close()
        auth.close()
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
        auth=auth,
    )

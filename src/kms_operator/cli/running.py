"""``kms-operator run``, the composition root: the store, the key service, the shared TLS
identity and audit trail, then the front ends over them (the data-plane API, the Kopf operator
with its deadline scheduler) in one loop.

The front ends do not import each other; this module is the one place that knows them all.
"""

from __future__ import annotations

import asyncio
import logging

from kms_operator import api as native_api
from kms_operator.awskms import routes as awskms
from kms_operator.awskms.identifiers import Arns
from kms_operator.keys.clock import Timescale
from kms_operator.keys.service import KeyService
from kms_operator.kube.client import load_api_client
from kms_operator.kube.resources import KeyResources
from kms_operator.operator import runner
from kms_operator.serving import audit, tls
from kms_operator.serving.server import start_api_server
from kms_operator.settings import Settings
from kms_operator.store.rootkey import load_root_key_file
from kms_operator.store.sqlite import SqliteKeyStore

log = logging.getLogger(__name__)


def run(settings: Settings) -> None:
    timescale = Timescale(settings.day_seconds)
    if not timescale.is_real_time:
        log.warning(
            "a day lasts %s seconds (--day-seconds): pending windows, rotation periods and "
            "expiries run fast; never use this in production",
            settings.day_seconds,
        )
    store = SqliteKeyStore(settings.store_path, load_root_key_file(settings.root_key_file))
    try:
        service = KeyService(store, timescale=timescale)
        asyncio.run(_serve(settings, service))
    finally:
        store.close()


async def _serve(settings: Settings, service: KeyService) -> None:
    api_client = load_api_client(settings.kubeconfig)
    audit_sink = audit.open_sink(settings.audit_log)  # the operator's lines; the API opens its own
    runtime = runner.new_runtime(service, api_client, settings, audit_sink)
    await asyncio.to_thread(service.warm_cache)
    # One TLS identity for the API and the webhook: loaded (or generated: one CA) once here,
    # and its temporary directory, when there is one, removed here on the way out.
    identity = None
    if settings.api_enabled or settings.webhook_enabled:
        identity = await asyncio.to_thread(tls.load_or_generate, settings)
    try:
        api = None
        if settings.api_enabled:
            api = await start_api_server(
                service,
                settings,
                api_client,
                front_ends=(
                    awskms.front_end(Arns(settings.aws_account_id), KeyResources(api_client)),
                    native_api.add_routes,
                ),
                readiness_checks=(runtime.scheduler.problem,),
                serving=identity,
            )
            api.mark_ready()
            log.info("data-plane API listening on %s", api.url)
        try:
            await runner.operate(runtime, identity if settings.webhook_enabled else None)
        finally:
            if api is not None:
                await api.stop()
    finally:
        if identity is not None:
            identity.cleanup()
        audit_sink.close()
        api_client.close()  # type: ignore[no-untyped-call]

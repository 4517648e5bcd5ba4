"""``kms-operator run``: the store, the key service, the data-plane API and Kopf in one loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

import kopf

from kms_operator.api import audit, tls
from kms_operator.api.server import start_api_server
from kms_operator.keys.clock import Timescale
from kms_operator.keys.service import KeyService
from kms_operator.kube.client import connection_parameters, load_api_client
from kms_operator.kube.objects import Objects
from kms_operator.kube.reviews import ApiClient
from kms_operator.settings import Settings
from kms_operator.store.rootkey import load_root_key_file
from kms_operator.store.sqlite import SqliteKeyStore

# Importing a kind's module registers its handlers in the one registry.
from . import customermasterkeys, datakeys, keymaterialimports  # noqa: F401
from .registries import operator_settings, registry
from .runtime import Runtime
from .scheduling import DeadlineScheduler

log = logging.getLogger(__name__)


def run(settings: Settings) -> None:
    if settings.day_seconds != 86400:
        log.warning(
            "a day lasts %s seconds (--day-seconds): pending windows, rotation periods and "
            "expiries run fast; never use this in production",
            settings.day_seconds,
        )
    store = SqliteKeyStore(settings.store_path, load_root_key_file(settings.root_key_file))
    try:
        service = KeyService(store, timescale=Timescale(settings.day_seconds))
        asyncio.run(_serve(settings, service))
    finally:
        store.close()


async def _serve(settings: Settings, service: KeyService) -> None:
    api_client = load_api_client(settings.kubeconfig)
    objects = Objects(api_client)
    scheduler = DeadlineScheduler(service, objects, max_sleep=min(30.0, settings.day_seconds / 4))
    audit_sink = audit.open_sink(settings.audit_log)  # the operator's lines; the API opens its own
    runtime = Runtime(
        service=service,
        objects=objects,
        scheduler=scheduler,
        settings=settings,
        connection=connection_parameters(api_client),
        audit=audit_sink,
    )
    await asyncio.to_thread(service.warm_cache)
    # One TLS identity for the API and the webhook: loaded (or generated: one CA) once here,
    # and its temporary directory, when there is one, removed here on the way out.
    serving = None
    if settings.api_enabled or settings.webhook_enabled:
        serving = await asyncio.to_thread(tls.load_or_generate, settings)
    try:
        await _operate(settings, runtime, api_client, serving)
    finally:
        if serving is not None:
            serving.cleanup()
        audit_sink.close()
        api_client.close()  # type: ignore[no-untyped-call]


async def _operate(
    settings: Settings,
    runtime: Runtime,
    api_client: ApiClient,
    serving: tls.ServingTls | None,
) -> None:
    api = None
    if settings.api_enabled:
        api = await start_api_server(
            runtime.service,
            settings,
            api_client,
            readiness_checks=(runtime.scheduler.problem,),
            serving=serving,
        )
        api.mark_ready()
        log.info("data-plane API listening on %s", api.url)
    try:
        await asyncio.to_thread(customermasterkeys.report_keys_without_objects, runtime)
        webhook_tls = serving if settings.webhook_enabled else None
        if webhook_tls is not None:
            customermasterkeys.register_admission()
        kopf_settings = operator_settings(
            settings,
            webhook_tls,
            functools.partial(customermasterkeys.configure_webhooks, runtime.objects),
        )
        operator = asyncio.create_task(
            kopf.operator(
                registry=registry,
                settings=kopf_settings,
                memo=kopf.Memo(runtime=runtime),
                clusterwide=not settings.namespaces,
                namespaces=settings.namespaces,
                standalone=True,
            ),
            name="kopf",
        )
        timers = asyncio.create_task(runtime.scheduler.run(), name="scheduler")
        try:
            done, _ = await asyncio.wait({operator, timers}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled():  # Kopf cancels its siblings when it stops on a signal
                    task.result()  # re-raise a crash of either
        finally:
            for task in (operator, timers):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        if api is not None:
            await api.stop()

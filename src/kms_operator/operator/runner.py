"""The operator's side of ``kms-operator run``: Kopf's handlers and the deadline scheduler.

The composition root (:mod:`kms_operator.cli.running`) builds the :class:`Runtime` with
:func:`new_runtime`, gives the API the scheduler's readiness, and awaits :func:`operate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools

import kopf

from kms_operator.keys.service import KeyService
from kms_operator.kube.client import connection_parameters
from kms_operator.kube.objects import Objects
from kms_operator.kube.reviews import ApiClient
from kms_operator.serving.audit import AuditSink
from kms_operator.serving.tls import ServingTls
from kms_operator.settings import Settings

# Importing a kind's module registers its handlers in the one registry.
from . import customermasterkeys, datakeys, keymaterialimports  # noqa: F401
from .registries import operator_settings, registry
from .runtime import Runtime
from .scheduling import DeadlineScheduler


def new_runtime(
    service: KeyService, api_client: ApiClient, settings: Settings, audit: AuditSink
) -> Runtime:
    """What the handlers and the scheduler share; ``audit`` takes the operator's own lines."""
    objects = Objects(api_client)
    # The clock is re-read at least every 30 s, and four times a day when --day-seconds is short.
    scheduler = DeadlineScheduler(service, objects, max_sleep=min(30.0, settings.day_seconds / 4))
    return Runtime(
        service=service,
        objects=objects,
        scheduler=scheduler,
        settings=settings,
        connection=connection_parameters(api_client),
        audit=audit,
    )


async def operate(runtime: Runtime, webhook_tls: ServingTls | None) -> None:
    """Report keys without objects, then run Kopf (with the validating webhook when
    ``webhook_tls`` is given) and the scheduler until either stops; re-raise a crash of
    either."""
    settings = runtime.settings
    await asyncio.to_thread(customermasterkeys.report_keys_without_objects, runtime)
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

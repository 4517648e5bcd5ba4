"""The optional validating webhook: refusals at admission (the operator works without it).

:func:`admission_problem` is the pure decision; :func:`validate` is Kopf's handler over it,
registered by :func:`register_admission` only when a webhook server runs, and
:func:`configure_webhooks` points the chart's ValidatingWebhookConfiguration at that server.
Without the webhook the same rules are enforced later, by the reconciliation (Events and
conditions).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

import kopf

from kms_operator.contract import (
    CMK_PLURAL,
    DEFAULT_LABEL,
    GROUP,
    ROTATE_ANNOTATION,
    VERSION,
    WEBHOOK_CONFIGURATION,
)
from kms_operator.errors import KmsError
from kms_operator.keys.service import DEFAULT_ALIAS_PREFIX, KeyService
from kms_operator.kube.objects import Objects

from ..registries import registry
from ..runtime import Runtime

log = logging.getLogger(__name__)

ADMISSION_ID = "cmk-admission"
ADMISSION_OPERATIONS: tuple[Literal["CREATE", "UPDATE", "DELETE"], ...] = (
    "CREATE",
    "UPDATE",
    "DELETE",
)


def alias_owners(service: KeyService, namespace: str, aliases: Any) -> dict[str, set[str]]:
    """Which key object holds each alias in the store (the store decides who keeps one).

    Not a Kopf index: Kopf holds every handler until an index has seen all objects, while the
    objects waiting for that hold the worker slots, so more objects at start than
    ``--max-workers`` stopped the operator for good.
    """
    owners: dict[str, set[str]] = {}
    for alias in aliases or ():
        try:
            owners[alias] = {service.resolve(namespace, str(alias)).name}
        except KmsError:
            owners[alias] = set()
    return owners


def _is_default(body: Mapping[str, Any] | None) -> bool:
    labels = ((body or {}).get("metadata") or {}).get("labels") or {}
    return bool(labels.get(DEFAULT_LABEL) == "true")


def admission_problem(
    operation: str,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    alias_owners: Mapping[str, set[str]],
    *,
    namespace_terminating: bool = False,
) -> str | None:
    """Why a request must be refused, or None. A pure function: the webhook only wraps it.

    Only what a request *changes* is judged, so the operator's own writes (finalizers,
    recreating an object after a cancelled deletion) always pass. In a namespace being deleted
    (``namespace_terminating``), a default key's deletion passes: the key goes with the
    namespace, which could not finish otherwise.
    """
    body = new if new is not None else old
    if body is None:
        return None
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    name = meta.get("name")
    is_default, was_default = _is_default(body), old is not None and _is_default(old)
    if operation == "DELETE":
        if was_default and not namespace_terminating:
            return "default keys cannot be deleted (only with their namespace)"
        return None
    if was_default and not is_default:
        return f"the {DEFAULT_LABEL} label of a default key cannot be removed"
    old_spec = (old or {}).get("spec") or {}
    if is_default and operation == "UPDATE":
        if spec.get("enabled") is False and old_spec.get("enabled") is not False:
            return "default keys cannot be disabled (spec.enabled must stay true)"
        before = ((old or {}).get("metadata") or {}).get("annotations") or {}
        after = meta.get("annotations") or {}
        if after.get(ROTATE_ANNOTATION) != before.get(ROTATE_ANNOTATION):
            return "default keys cannot be rotated on demand (kms.cmk.dev/rotate)"
    added = set(spec.get("aliases") or ()) - set(old_spec.get("aliases") or ())
    for alias in sorted(added):
        if alias.startswith(DEFAULT_ALIAS_PREFIX) and not is_default:
            return (
                f"spec.aliases: {alias!r} is reserved: {DEFAULT_ALIAS_PREFIX}… names default keys"
            )
        others = alias_owners.get(alias, set()) - {name}
        if others:
            return (
                f"spec.aliases: {alias!r} already names key {', '.join(sorted(others))} "
                "in this namespace"
            )
    return None


def validate(**kwargs: Any) -> None:
    """Kopf's validating handler (synchronous: Kopf runs it in a thread)."""
    old, new, namespace = kwargs["old"], kwargs["new"], kwargs["namespace"]
    try:
        runtime: Runtime = kwargs["memo"].runtime
        body = new if new is not None else old
        aliases = (body or {}).get("spec", {}).get("aliases") or ()
        owners = alias_owners(runtime.service, namespace, aliases)
        operation = kwargs.get("operation") or ""
        terminating = False
        if operation == "DELETE" and _is_default(old):
            # Only then is the namespace looked up.
            info = runtime.objects.namespace_info(namespace)
            terminating = info is None or info.terminating
        problem = admission_problem(operation, old, new, owners, namespace_terminating=terminating)
    except Exception:
        # A fault of ours must not block every write (the operator's own included): admit,
        # and let the reconciliation refuse with Events and conditions as without a webhook.
        log.exception("admission check failed; admitting the request")
        return
    if problem is not None:
        raise kopf.AdmissionError(problem, code=422)


def webhook_entries(client_config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``webhooks`` of the ValidatingWebhookConfiguration for Kopf's server at
    ``client_config`` (its URL and CA): one webhook, for CustomerMasterKeys."""
    config = dict(client_config)
    if config.get("url"):
        config["url"] = f"{str(config['url']).rstrip('/')}/{ADMISSION_ID}"
    if isinstance(config.get("service"), Mapping):
        service = dict(config["service"])
        service["path"] = f"{str(service.get('path') or '').rstrip('/')}/{ADMISSION_ID}"
        config["service"] = service
    return [
        {
            "name": f"{ADMISSION_ID}.{GROUP}",
            "clientConfig": config,
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "apiVersions": [VERSION],
                    "resources": [CMK_PLURAL],
                    "operations": list(ADMISSION_OPERATIONS),
                    "scope": "Namespaced",
                }
            ],
            # When the operator is down, requests pass; Events and conditions still explain.
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "matchPolicy": "Equivalent",
            "timeoutSeconds": 10,
            "admissionReviewVersions": ["v1"],
        }
    ]


def configure_webhooks(objects: Objects, client_config: Mapping[str, Any] | None) -> None:
    """Point the chart's ValidatingWebhookConfiguration at the webhook server (None: remove
    the webhook, on shutdown). The operator may only patch that one configuration."""
    entries = webhook_entries(client_config) if client_config is not None else []
    objects.patch_validating_webhooks(WEBHOOK_CONFIGURATION, entries)


def register_admission() -> None:
    """Add the validating webhook; only with a webhook server (Kopf refuses one without)."""
    kopf.on.validate(
        GROUP,
        VERSION,
        CMK_PLURAL,
        id=ADMISSION_ID,
        registry=registry,
        operations=list(ADMISSION_OPERATIONS),
        # When the operator is down, requests pass; Events and conditions still explain.
        ignore_failures=True,
    )(validate)

"""What every handler needs, carried to Kopf handlers through ``memo``."""

from __future__ import annotations

from dataclasses import dataclass, field

from kms_operator.keys.service import KeyService
from kms_operator.kube.client import ConnectionParameters
from kms_operator.kube.objects import Objects
from kms_operator.serving.audit import AuditSink
from kms_operator.settings import Settings

from .scheduling import Backoff, DeadlineScheduler


@dataclass
class Runtime:
    service: KeyService
    objects: Objects
    scheduler: DeadlineScheduler
    settings: Settings
    connection: ConnectionParameters
    #: The operator's own audit lines (DataKeys' generate, decrypt, re-encrypt): the same
    #: target as the API's (``--audit-log``), fail-closed.
    audit: AuditSink
    #: Delays between retries of failed handler steps (deletion, re-creation).
    backoff: Backoff = field(default_factory=lambda: Backoff(first=1.0, cap=60.0))

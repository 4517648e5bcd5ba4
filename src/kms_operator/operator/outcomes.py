"""What the handlers of every kind share: Outcome, refusal, error mapping, the Event rule.

* A reconciliation ends in an :class:`Outcome`: the Ready condition, the status fields it
  learnt, other conditions, the Events to post and maybe a retry delay. Handlers turn it into a
  status patch and, when ``retry_after`` is set, a ``kopf.TemporaryError``.
* :func:`handler_error` is the one mapping of a domain error (``KmsError``) to Kopf: retryable
  errors are retried after a delay, the others are permanent (the spec must change).
* Events: every Event goes through :func:`post_notices` (the operator's own poster, component
  ``kms-operator``, in a thread): it works the same for the object being handled, for another
  object (a key's CMK named by a DataKey) and from the scheduler or a daemon, and a failure to
  post is logged, never raised (the status already holds what happened).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import kopf

from kms_operator.errors import KmsError
from kms_operator.kube.objects import Objects

from . import conditions
from .conditions import Condition

log = logging.getLogger(__name__)

#: Seconds before a retryable domain error (the store busy, a transient failure) is retried.
RETRY_DELAY = 10.0


@dataclass(frozen=True)
class Notice:
    """An Event to post; ``on_change`` ones only when the Ready reason changes (no spam)."""

    type: str
    reason: str
    message: str
    on_change: bool = False


@dataclass(frozen=True)
class Outcome:
    """What one reconciliation found and what to write about it."""

    ready: Condition
    #: Status fields learnt this time (others are left as they are: a merge patch).
    fields: Mapping[str, Any] = field(default_factory=dict)
    extra_conditions: tuple[Condition, ...] = ()
    notices: tuple[Notice, ...] = ()
    #: When set, the handler retries after this many seconds (``kopf.TemporaryError``).
    retry_after: float | None = None

    def notices_to_post(self, previous_ready: Mapping[str, Any]) -> list[Notice]:
        changed = previous_ready.get("reason") != self.ready.reason
        return [n for n in self.notices if changed or not n.on_change]


def not_ready(reason: str, message: str) -> Condition:
    return Condition(conditions.READY, False, reason, message)


def status_patch(
    outcome: Outcome,
    *,
    existing_conditions: Iterable[Mapping[str, Any]] | None,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    """``status`` for a merge patch: the outcome's fields and conditions, others left as they
    are; ``observedGeneration`` only when a handler saw the generation (daemons do not)."""
    status: dict[str, Any] = {
        **outcome.fields,
        "conditions": conditions.merge_conditions(
            existing_conditions,
            [outcome.ready, *outcome.extra_conditions],
            generation=generation,
            now=now,
        ),
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def handler_error(
    exc: KmsError, *, delay: float = RETRY_DELAY
) -> kopf.TemporaryError | kopf.PermanentError:
    """The one translation of a domain error for Kopf (raise it ``from None``)."""
    if exc.retryable:
        return kopf.TemporaryError(exc.message, delay=delay)
    return kopf.PermanentError(exc.message)


@dataclass(frozen=True)
class ObjectRef:
    kind: str
    namespace: str
    name: str
    uid: str | None

    @classmethod
    def of(cls, kind: str, body: Mapping[str, Any]) -> ObjectRef:
        meta = body["metadata"]
        return cls(kind, meta["namespace"], meta["name"], meta.get("uid"))


def post_notices_now(objects: Objects, ref: ObjectRef, notices: Iterable[Notice]) -> None:
    """Post ``notices`` on ``ref`` (synchronous: from threads). Failures are logged."""
    for notice in notices:
        try:
            objects.post_event_on(
                ref.kind,
                ref.namespace,
                ref.name,
                ref.uid,
                type_=notice.type,
                reason=notice.reason,
                message=notice.message,
            )
        except Exception:
            log.exception(
                "could not post the %s event on %s %s/%s",
                notice.reason,
                ref.kind,
                ref.namespace,
                ref.name,
            )


async def post_notices(objects: Objects, ref: ObjectRef, notices: Iterable[Notice]) -> None:
    """:func:`post_notices_now` off the event loop (from async handlers)."""
    listed = list(notices)
    if listed:
        await asyncio.to_thread(post_notices_now, objects, ref, listed)

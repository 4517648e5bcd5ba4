"""One change to a key at a time, and one timer at a time, through the service's verbs.

The service changes a key's settings only by applying a whole spec
(:meth:`KeyService.apply_spec`, which reports refusals as problems) and fires timers only all
at once (:meth:`KeyService.run_due`). Many tests change one setting of a key they made and
expect a refusal to be raised, or watch one key's timer: these helpers keep the key's other
settings and raise the first problem, or run the timers and check that only the one expected
fired.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from kms_operator.keys.service import KeyService, KeySettings, Timer
from kms_operator.store.records import KeyRecord


def settings_of(record: KeyRecord) -> KeySettings:
    """The settings the key has now (applying them changes nothing)."""
    return KeySettings(
        description=record.description,
        enabled=record.enabled,
        aliases=record.aliases,
        rotation_period_days=record.rotation_period_days,
    )


def change(
    service: KeyService, key_id: uuid.UUID, *, rotate: bool = False, **fields: Any
) -> KeyRecord:
    """Apply the key's settings with ``fields`` changed; raise the first problem."""
    desired = replace(settings_of(service.get(key_id)), **fields)
    record, problems = service.apply_spec(key_id, desired, rotate=rotate)
    if problems:
        raise problems[0]
    return record


def set_enabled(service: KeyService, key_id: uuid.UUID, enabled: bool) -> KeyRecord:
    return change(service, key_id, enabled=enabled)


def set_description(service: KeyService, key_id: uuid.UUID, description: str) -> KeyRecord:
    return change(service, key_id, description=description)


def set_aliases(service: KeyService, key_id: uuid.UUID, aliases: Sequence[str]) -> KeyRecord:
    return change(service, key_id, aliases=tuple(aliases))


def set_rotation_period(service: KeyService, key_id: uuid.UUID, days: int | None) -> KeyRecord:
    return change(service, key_id, rotation_period_days=days)


def rotate(service: KeyService, key_id: uuid.UUID) -> KeyRecord:
    """On-demand rotation (the ``kms.cmk.dev/rotate`` annotation changed)."""
    return change(service, key_id, rotate=True)


def fire(service: KeyService, key_id: uuid.UUID, timer: Timer) -> KeyRecord | None:
    """Run the timers due now: None when none fired, else ``key_id`` as ``timer`` left it.

    Fails when anything else fired (another key, another timer).
    """
    fired = service.run_due(service.clock.now())
    if not fired:
        return None
    assert [(r.key_id, what) for r, what in fired] == [(key_id, timer)], fired
    return fired[0][0]

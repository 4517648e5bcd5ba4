"""A CustomerMasterKey's spec, parsed, and what applying it shows on the object.

Pure functions. :class:`CustomerMasterKeySpec` is the spec as the CRD schema guarantees it;
its :attr:`~CustomerMasterKeySpec.settings` are what
:meth:`~kms_operator.keys.service.KeyService.apply_spec` brings the key to, and
:func:`applied_outcome` turns what that verb did (the key, the refusals) into the status and
the Events of the object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kms_operator.contract import DEFAULT_LABEL, ROTATE_ANNOTATION
from kms_operator.errors import DefaultKeyProtected, KmsError
from kms_operator.keys.service import (
    DEFAULT_ALIAS_PREFIX,
    DEFAULT_PENDING_WINDOW_DAYS,
    KeySettings,
    SpecResult,
)
from kms_operator.store.records import Origin

from .. import conditions, statuses
from ..conditions import Condition
from ..outcomes import Notice, Outcome
from .aliases import ALIAS_CONFLICT


@dataclass(frozen=True)
class CustomerMasterKeySpec:
    """``spec`` as the CRD schema guarantees it (defaults applied by the API server)."""

    description: str
    aliases: tuple[str, ...]
    origin: Origin
    enabled: bool
    rotation_period_days: int | None
    pending_window_days: int

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> CustomerMasterKeySpec:
        rotation = spec.get("rotation") or {}
        return cls(
            description=str(spec.get("description") or ""),
            aliases=tuple(spec.get("aliases") or ()),
            origin=Origin(spec.get("origin") or Origin.KMS.value),
            enabled=bool(spec.get("enabled", True)),
            rotation_period_days=rotation.get("periodDays"),
            pending_window_days=int(spec.get("pendingWindowDays") or DEFAULT_PENDING_WINDOW_DAYS),
        )

    @property
    def settings(self) -> KeySettings:
        return KeySettings(
            description=self.description,
            enabled=self.enabled,
            aliases=self.aliases,
            rotation_period_days=self.rotation_period_days,
        )


def default_service_of(labels: Mapping[str, str], aliases: tuple[str, ...]) -> str | None:
    """A default key is labelled ``kms.cmk.dev/default=true`` and named by ``alias/kms/<svc>``."""
    if labels.get(DEFAULT_LABEL) != "true":
        return None
    for alias in aliases:
        if alias.startswith(DEFAULT_ALIAS_PREFIX):
            return alias.removeprefix(DEFAULT_ALIAS_PREFIX)
    return None


def rotation_requested(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """An update asks for an on-demand rotation when ``kms.cmk.dev/rotate`` got a new value."""
    before = (old.get("metadata") or {}).get("annotations") or {}
    after = (new.get("metadata") or {}).get("annotations") or {}
    return after.get(ROTATE_ANNOTATION) not in (None, before.get(ROTATE_ANNOTATION))


def problem_reason(problem: KmsError) -> str:
    """The reason (of ``Synced`` and of the Warning) for a field the service refused."""
    if isinstance(problem, DefaultKeyProtected):
        return conditions.DEFAULT_KEY_PROTECTED
    if problem.code == "AlreadyExists":
        return ALIAS_CONFLICT
    return conditions.INVALID_SPEC


def synced_condition(problems: Sequence[KmsError]) -> Condition:
    """``Synced``: True when the whole spec is applied; else the first refusal's reason and
    every refusal's message."""
    if not problems:
        return Condition(conditions.SYNCED, True, conditions.APPLIED, "the spec is applied")
    return Condition(
        conditions.SYNCED,
        False,
        problem_reason(problems[0]),
        "; ".join(p.message for p in problems),
    )


def applied_outcome(
    applied: SpecResult, *, created: bool, rotate: bool, alias_conflict: Condition
) -> Outcome:
    """The object after its spec was applied: the key's status, Synced, AliasConflict, and
    the Events (the key created, each refusal, the rotation on demand)."""
    record, problems = applied
    notices: list[Notice] = []
    if created:
        notices.append(Notice("Normal", conditions.CREATED, f"created key {record.key_id}"))
    notices += [Notice("Warning", problem_reason(p), p.message) for p in problems]
    if rotate and not problems:
        notices.append(
            Notice(
                "Normal",
                conditions.ROTATED,
                f"rotated on demand to version {record.current_version}",
            )
        )
    return statuses.key_outcome(record, (synced_condition(problems), alias_conflict), notices)

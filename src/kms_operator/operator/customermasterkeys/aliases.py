"""Alias conflicts between the keys of a namespace, shown on every side of the clash.

The store decides who holds an alias (the first to ask); the ``AliasConflict`` condition tells
both the holder and each key asking for the alias in vain. :func:`alias_conflict_condition` is
the pure decision; :func:`refresh_alias_conflicts` writes it on the other objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .. import conditions
from ..conditions import Condition
from ..runtime import Runtime

#: The condition type, and its reason while aliases clash.
ALIAS_CONFLICT = "AliasConflict"
NO_CONFLICT = "NoConflict"


def alias_claims(items: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Which live objects of one namespace ask for each alias (terminating ones do not count)."""
    claims: dict[str, list[str]] = {}
    for item in items:
        if item["metadata"].get("deletionTimestamp"):
            continue
        for alias in (item.get("spec") or {}).get("aliases") or ():
            claims.setdefault(alias, []).append(item["metadata"]["name"])
    return claims


def alias_conflict_condition(name: str, aliases: Any, claims: dict[str, list[str]]) -> Condition:
    """Both sides of a clash see it: the key holding an alias and the one asking for it."""
    clashes = sorted(
        f"{alias} (also claimed by {', '.join(sorted(set(claims[alias]) - {name}))})"
        for alias in aliases or ()
        if len(set(claims.get(alias, ())) | {name}) > 1
    )
    if clashes:
        return Condition(
            ALIAS_CONFLICT,
            True,
            ALIAS_CONFLICT,
            "aliases claimed by more than one key in the namespace: " + "; ".join(clashes),
        )
    return Condition(ALIAS_CONFLICT, False, NO_CONFLICT, "no alias conflict")


#: What an object with no clash shows.
NO_ALIAS_CONFLICT = alias_conflict_condition("", (), {})


def shows_conflict(status: Mapping[str, Any]) -> bool:
    """The object's status says its aliases clash (so a change may end the clash)."""
    found = conditions.find_condition(status.get("conditions"), ALIAS_CONFLICT)
    return found.get("status") == "True"


def _differs(shown: Mapping[str, Any], wanted: Condition) -> bool:
    return (shown.get("status") == "True") != wanted.status or shown.get(
        "message"
    ) != wanted.message


def refresh_alias_conflicts(runtime: Runtime, namespace: str, skip: str) -> Condition:
    """Recompute AliasConflict on every key of the namespace; return the one for ``skip``.

    Others are patched here; ``skip`` (the object being reconciled) gets its condition through
    the handler's own status patch, so the two writes never race.
    """
    items = runtime.objects.list_cmks(namespace)
    claims = alias_claims(items)
    own = NO_ALIAS_CONFLICT
    for item in items:
        meta, status = item["metadata"], item.get("status") or {}
        wanted = alias_conflict_condition(
            meta["name"], (item.get("spec") or {}).get("aliases"), claims
        )
        if meta["name"] == skip:
            own = wanted
            continue
        if meta.get("deletionTimestamp") or not status.get("keyId"):
            continue
        shown = conditions.find_condition(status.get("conditions"), ALIAS_CONFLICT)
        if not shown or _differs(shown, wanted):
            runtime.objects.patch_cmk_status(
                namespace,
                meta["name"],
                {
                    "conditions": conditions.merge_conditions(
                        status.get("conditions"),
                        [wanted],
                        generation=None,
                        now=runtime.service.clock.now(),
                    )
                },
            )
    return own

"""The lifecycle verbs: create a key, apply its spec, schedule and cancel its deletion.

:meth:`LifecycleVerbs.apply_spec` is the one way a key's settings change: the operator hands
it a whole spec (a CustomerMasterKey's, parsed) and it decides field by field what to apply
and what to refuse, then writes the result in one store transaction. A refused field does not
block the others; it comes back as a problem (a domain error, not raised), so the caller
reports every refusal at once and the store never holds half of a spec.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from kms_operator.crypto import primitives
from kms_operator.errors import DefaultKeyProtected, InvalidRequest, KeyStateError, KmsError
from kms_operator.store.records import KeyRecord, KeyState, Origin, VersionRecord, VersionState

from .base import ServiceBase
from .rules import (
    DEFAULT_ALIAS_PREFIX,
    MATERIAL_SIZE,
    check_pending_window,
    check_rotation_period,
    refuse_state,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeySettings:
    """What a spec asks of a key: the settings :meth:`LifecycleVerbs.apply_spec` brings it to.

    Origin and binding are not settings: they are fixed when the key is created.
    """

    description: str = ""
    enabled: bool = True
    aliases: tuple[str, ...] = ()
    #: Automatic rotation every so many days; None: off.
    rotation_period_days: int | None = None


class SpecResult(NamedTuple):
    """The key after :meth:`LifecycleVerbs.apply_spec`, and what it refused (in spec order)."""

    record: KeyRecord
    problems: list[KmsError]


class LifecycleVerbs(ServiceBase):
    def create_key(
        self,
        namespace: str,
        name: str,
        *,
        origin: Origin = Origin.KMS,
        description: str = "",
        aliases: Sequence[str] = (),
        enabled: bool = True,
        rotation_period_days: int | None = None,
        default_service: str | None = None,
        namespace_uid: str | None = None,
        object_uid: str | None = None,
        key_id: uuid.UUID | None = None,
    ) -> KeyRecord:
        """Create the key bound to ``namespace/name``; return the existing one if bound already.

        Idempotent on purpose: the operator retries after a crash, and must find the key it
        created instead of making a second one.

        ``key_id`` gives an EXTERNAL key the id of a key held elsewhere (the KMS v2 plugin's
        nodes share one key: the same id and the same imported material in each store, so
        each decrypts the others' blobs, whose header names the id). KMS keys always get a new
        random id: their material is made here, so no other store can hold the same key.
        """
        with self._index.writing():
            existing = self.find(namespace, name)
            if existing is not None:
                if key_id is not None and existing.key_id != key_id:
                    raise InvalidRequest(
                        f"key {namespace}/{name} exists already with key id {existing.key_id}, "
                        f"not {key_id}",
                        field="keyId",
                    )
                return existing
            if key_id is None:
                key_id = uuid.uuid4()
            else:
                self._check_given_key_id(key_id, origin)
            self._check_aliases(namespace, key_id, aliases, default_service is not None)
            if rotation_period_days is not None:
                check_rotation_period(origin, rotation_period_days)
            now = self.clock.now()
            material: dict[int, bytes] = {}
            if origin is Origin.KMS:
                material[1] = primitives.random_bytes(MATERIAL_SIZE)
                first = VersionRecord(1, now, VersionState.ENABLED)
            else:
                first = VersionRecord(1, now, VersionState.PENDING_IMPORT)
            record = KeyRecord(
                key_id=key_id,
                namespace=namespace,
                name=name,
                origin=origin,
                created_at=now,
                versions=(first,),
                description=description,
                enabled=enabled,
                aliases=tuple(sorted(set(aliases))),
                rotation_period_days=rotation_period_days,
                next_rotation_at=(
                    now + self.timescale.days(rotation_period_days)
                    if rotation_period_days
                    else None
                ),
                default_service=default_service,
                namespace_uid=namespace_uid,
                object_uid=object_uid,
            )
            elapsed = self.elapsed.now_us()
            self._store.create(record, material, elapsed_us=elapsed)
            self.elapsed.persisted(elapsed)
            self._index.publish(record, material)
            log.info("created key %s for %s/%s (origin %s)", key_id, namespace, name, origin)
            return record

    def _check_given_key_id(self, key_id: uuid.UUID, origin: Origin) -> None:
        if origin is not Origin.EXTERNAL:
            raise InvalidRequest(
                "only EXTERNAL keys take a given key id: a KMS key's material is made by this "
                "store, so another key of the same id could never decrypt its blobs",
                field="keyId",
            )
        taken = self._index.get(key_id)
        if taken is not None:
            raise InvalidRequest(
                f"key id {key_id} is taken by key {taken.namespace}/{taken.name} "
                f"({taken.state}): a key id is never reused",
                field="keyId",
            )

    def apply_spec(
        self, key_id: uuid.UUID, desired: KeySettings, *, rotate: bool = False
    ) -> SpecResult:
        """Bring the key to ``desired`` (and rotate it on demand): one store transaction.

        Each field is applied unless a rule refuses it (a default key stays enabled and keeps
        its ``alias/kms/…`` alias, aliases are unique in the namespace, periods are within
        bounds, only Enabled KMS keys rotate); the refusals are the result's problems. A key
        pending deletion or destroyed takes no spec at all, not even an unchanged one: one
        problem names its state. Nothing is written when nothing changes (the same record
        comes back). Store failures are raised (retryable), never returned as problems.
        """
        with self._index.writing():
            record = self.get(key_id)
            now = self.clock.now()
            if record.state in (KeyState.PENDING_DELETION, KeyState.DESTROYED):
                return SpecResult(record, [self._refusal(record, now, rotate=rotate)])
            updated = record.evolve(description=desired.description)
            problems: list[KmsError] = []
            for settle in (self._enabled_to, self._aliases_to, self._rotation_period_to):
                try:
                    updated = settle(updated, desired, now)
                except KmsError as exc:
                    if exc.retryable:
                        raise
                    problems.append(exc)
            material: dict[int, bytes] = {}
            if rotate:
                try:
                    updated, material = self._rotated_on_demand(updated, now)
                except KmsError as exc:
                    if exc.retryable:
                        raise
                    problems.append(exc)
            if updated == record:
                return SpecResult(record, problems)
            saved = self._save(updated, add_material=material)
            if material:
                log.info("rotated key %s to version %d (on demand)", key_id, saved.current_version)
            return SpecResult(saved, problems)

    def _refusal(self, record: KeyRecord, now: datetime, *, rotate: bool) -> KmsError:
        """Why a key pending deletion or destroyed takes no spec; a rotation names the first
        rule it breaks (a default key, an EXTERNAL key, then the state)."""
        if rotate:
            try:
                self._rotated_on_demand(record, now)
            except KmsError as exc:
                return exc
        return refuse_state(record, "applying the spec")

    @staticmethod
    def _enabled_to(record: KeyRecord, desired: KeySettings, now: datetime) -> KeyRecord:
        if record.enabled == desired.enabled:
            return record
        if not desired.enabled and record.is_default:
            raise DefaultKeyProtected(
                f"key {record.namespace}/{record.name} is a default key and cannot be disabled"
            )
        return record.evolve(enabled=desired.enabled)

    def _aliases_to(self, record: KeyRecord, desired: KeySettings, now: datetime) -> KeyRecord:
        wanted = tuple(sorted(set(desired.aliases)))
        if record.aliases == wanted:
            return record
        self._check_aliases(record.namespace, record.key_id, wanted, record.is_default)
        if record.is_default and not any(a.startswith(DEFAULT_ALIAS_PREFIX) for a in wanted):
            raise DefaultKeyProtected(
                f"key {record.namespace}/{record.name} is a default key: its "
                f"{DEFAULT_ALIAS_PREFIX}… alias cannot be removed"
            )
        return record.evolve(aliases=wanted)

    def _rotation_period_to(
        self, record: KeyRecord, desired: KeySettings, now: datetime
    ) -> KeyRecord:
        days = desired.rotation_period_days
        if record.rotation_period_days == days:
            return record
        if days is None:
            return record.evolve(rotation_period_days=None, next_rotation_at=None)
        check_rotation_period(record.origin, days)
        return record.evolve(
            rotation_period_days=days, next_rotation_at=now + self.timescale.days(days)
        )

    def _rotated_on_demand(
        self, record: KeyRecord, now: datetime
    ) -> tuple[KeyRecord, dict[int, bytes]]:
        if record.is_default:
            raise DefaultKeyProtected(
                f"key {record.namespace}/{record.name} is a default key and cannot be "
                "rotated on demand"
            )
        return self._rotation(record, now, scheduled=False)

    def schedule_deletion(
        self, key_id: uuid.UUID, pending_window_days: int, *, namespace_terminating: bool = False
    ) -> KeyRecord:
        """PendingDeletion until now + window; the date is fixed when first requested.

        Default keys are refused, except with ``namespace_terminating``: a namespace being
        deleted takes its default keys with it (the next namespace of that name never gets them).
        """
        with self._index.writing():
            record = self.get(key_id)
            if record.state in (KeyState.PENDING_DELETION, KeyState.DESTROYED):
                return record
            if record.is_default and not namespace_terminating:
                raise DefaultKeyProtected(
                    f"key {record.namespace}/{record.name} is a default key and cannot be deleted"
                )
            check_pending_window(pending_window_days)
            now = self.clock.now()
            updated = self._save(
                record.evolve(
                    deletion_requested_at=now,
                    deletion_date=now + self.timescale.days(pending_window_days),
                    deletion_requested_elapsed=self.elapsed.now_us(),
                )
            )
            log.info("key %s scheduled for deletion on %s", key_id, updated.deletion_date)
            return updated

    def cancel_deletion(self, key_id: uuid.UUID) -> KeyRecord:
        """Back from PendingDeletion to Disabled (as AWS does); re-enable explicitly."""
        with self._index.writing():
            record = self.get(key_id)
            if record.state is not KeyState.PENDING_DELETION:
                raise KeyStateError(
                    f"key {record.namespace}/{record.name} is {record.state}, not "
                    "PendingDeletion: there is no deletion to cancel"
                )
            log.info("deletion of key %s cancelled; the key is now disabled", key_id)
            return self._save(
                record.evolve(
                    enabled=False,
                    deletion_requested_at=None,
                    deletion_date=None,
                    deletion_requested_elapsed=None,
                )
            )

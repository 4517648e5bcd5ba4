"""What every group of verbs of the key service shares: the store, the index, time, reads.

:class:`ServiceBase` holds the one :class:`~kms_operator.keys.index.KeyIndex` (the writer lock
and the lock-free reads), the store and the clocks, and the steps every writer takes:
:meth:`ServiceBase._save` (write in one store transaction, then publish), and the checks and
record changes more than one group of verbs makes. The verbs themselves live in the modules
of their concern (:mod:`.lifecycle`, :mod:`.timers`, :mod:`.binding`, :mod:`.importing`,
:mod:`.encryption`); :class:`~kms_operator.keys.service.KeyService` puts them together.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime

from kms_operator.crypto import blob as blobs
from kms_operator.crypto import primitives
from kms_operator.errors import AliasConflict, InvalidCiphertext, InvalidRequest, NotFound
from kms_operator.store.base import KeyStore
from kms_operator.store.records import KeyRecord, KeyState, Origin, VersionRecord, VersionState

from .clock import Clock, SystemClock, Timescale
from .elapsed import ElapsedTime
from .index import Entry, KeyIndex
from .rules import (
    ALIAS_PREFIX,
    DEFAULT_ALIAS_PREFIX,
    KEY_ID_PATTERN,
    MATERIAL_SIZE,
    refuse_state,
    validate_alias,
)

log = logging.getLogger(__name__)

VersionFilter = Callable[[VersionRecord], bool]


class ServiceBase:
    """The state and the shared steps of :class:`~kms_operator.keys.service.KeyService`."""

    def __init__(
        self,
        store: KeyStore,
        *,
        clock: Clock | None = None,
        timescale: Timescale | None = None,
    ) -> None:
        self._store = store
        self.clock: Clock = clock or SystemClock()
        self.timescale = timescale or Timescale()
        # Read before the records: a write landing in between is then reloaded once more by
        # refresh(), never missed.
        self._data_version = store.data_version()
        self._index = KeyIndex(store.list_keys(), store.load_material)
        self.elapsed = ElapsedTime(self.clock, store)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._store!r}, keys={len(self._index.records())})"

    # -- reading -------------------------------------------------------------------------

    def warm_cache(self) -> None:
        """Unwrap every usable version now, so the first request pays no store read."""
        self._index.warm()

    def refresh(self) -> bool:
        """Catch up with writes another process made to the store; True if there were any.

        The service is the only writer of the store within its process, but the KMS v2
        plugin's ``keys`` commands write the node's store from another process while
        ``kms-plugin serve`` runs. The store's data version moves with every commit made
        through another handle; when it has moved, every record is read again and published
        the index's usual way (a reader sees each key before or after, never half), and the
        versions new to this process are unwrapped. When nothing changed it costs one read of
        that counter and takes no lock; the caller decides how often to call it.
        """
        if self._store.data_version() == self._data_version:
            return False
        with self._index.writing():
            seen = self._store.data_version()
            if seen == self._data_version:
                return False  # another thread caught up meanwhile
            changed = self._index.reload(self._store.list_keys())
            self._data_version = seen
        log.info("the store was written by another process; keys reloaded: %d", changed)
        return True

    def keys(self) -> list[KeyRecord]:
        return self._index.records()

    def get(self, key_id: uuid.UUID) -> KeyRecord:
        record = self._index.get(key_id)
        if record is None:
            raise NotFound(f"no key with id {key_id}")
        return record

    def find(self, namespace: str, name: str) -> KeyRecord | None:
        """The live (not destroyed, not detached) key bound to ``namespace/name``."""
        key_id = self._index.named(namespace, name)
        return None if key_id is None else self._index.get(key_id)

    def resolve(self, namespace: str, reference: str | uuid.UUID) -> KeyRecord:
        """A key by name, ``alias/…`` or canonical key id text, within ``namespace``.

        A :class:`uuid.UUID` is a key id resolved already (the API authorizes the record it
        resolved and then uses exactly that key, whatever moved in between).
        """
        return self._entry_in(namespace, reference).record

    def key_of_blob(self, ciphertext_blob: bytes) -> KeyRecord:
        """The key a blob names in its header; unknown keys are an ``InvalidCiphertext``."""
        header = blobs.parse_header(ciphertext_blob)
        record = self._index.get(header.key_id)
        if record is None or record.is_detached:
            log.debug("invalid ciphertext: unknown or detached key id %s", header.key_id)
            raise InvalidCiphertext()
        return record

    def _entry_in(self, namespace: str, reference: str | uuid.UUID) -> Entry:
        key_id: uuid.UUID | None
        if isinstance(reference, uuid.UUID):
            key_id = reference
        elif reference.startswith(ALIAS_PREFIX):
            key_id = self._index.aliased(namespace, reference)
        else:
            key_id = self._index.named(namespace, reference)
            if key_id is None and KEY_ID_PATTERN.match(reference):
                key_id = uuid.UUID(reference)
        entry = None if key_id is None else self._index.entry(key_id)
        if entry is None or entry.record.namespace != namespace or entry.record.is_detached:
            raise NotFound(f"no key {str(reference)!r} in namespace {namespace!r}")
        return entry

    # -- shared by the writers (writer lock held) ------------------------------------------

    def _live(self, key_id: uuid.UUID, operation: str) -> KeyRecord:
        """A key that is neither pending deletion nor destroyed, for spec changes."""
        record = self.get(key_id)
        if record.state in (KeyState.PENDING_DELETION, KeyState.DESTROYED):
            raise refuse_state(record, operation)
        return record

    def _check_aliases(
        self, namespace: str, key_id: uuid.UUID, aliases: Iterable[str], is_default: bool
    ) -> None:
        for alias in aliases:
            validate_alias(alias)
            if alias.startswith(DEFAULT_ALIAS_PREFIX) and not is_default:
                raise InvalidRequest(
                    f"alias {alias!r} is reserved: {DEFAULT_ALIAS_PREFIX}… names default keys",
                    field="aliases",
                )
            owner = self._index.aliased(namespace, alias)
            if owner is not None and owner != key_id:
                other = self.get(owner)
                raise AliasConflict(
                    f"alias {alias!r} already names key {namespace}/{other.name} ({other.key_id})"
                )

    def _rotation(
        self, record: KeyRecord, now: datetime, *, scheduled: bool
    ) -> tuple[KeyRecord, dict[int, bytes]]:
        """The record with a new current version, and that version's new material."""
        if record.origin is Origin.EXTERNAL:
            raise InvalidRequest(
                f"key {record.namespace}/{record.name} has EXTERNAL origin: it rotates only by "
                "importing new material (a new KeyMaterialImport)",
                field="origin",
            )
        if record.state is not KeyState.ENABLED:
            raise refuse_state(record, "rotation")
        number = record.current_version + 1
        changes: dict[str, object] = {
            "versions": (*record.versions, VersionRecord(number, now, VersionState.ENABLED)),
            "last_rotated_at": now,
        }
        if scheduled and record.rotation_period_days:
            changes["next_rotation_at"] = now + self.timescale.days(record.rotation_period_days)
        return record.evolve(**changes), {number: primitives.random_bytes(MATERIAL_SIZE)}

    def _drop_material(self, record: KeyRecord, selected: VersionFilter) -> KeyRecord:
        """Drop the material of the selected versions (they go to PendingImport)."""
        if record.state is KeyState.DESTROYED:
            return record
        dropped = [
            v.version for v in record.versions if selected(v) and v.state is VersionState.ENABLED
        ]
        if not dropped:
            return record
        versions = tuple(
            VersionRecord(v.version, v.created_at, VersionState.PENDING_IMPORT, v.fingerprint)
            if v.version in dropped
            else v
            for v in record.versions
        )
        log.info("key %s: material of versions %s deleted", record.key_id, dropped)
        return self._save(record.evolve(versions=versions), drop_material=dropped)

    def _save(
        self,
        record: KeyRecord,
        *,
        add_material: Mapping[int, bytes] | None = None,
        drop_material: Sequence[int] = (),
    ) -> KeyRecord:
        """Write ``record`` (writer lock held), then show it; the elapsed time goes with it."""
        elapsed = self.elapsed.now_us()
        self._store.update(
            record, add_material=add_material, drop_material=drop_material, elapsed_us=elapsed
        )
        self.elapsed.persisted(elapsed)
        self._index.publish(record, add_material)
        return record

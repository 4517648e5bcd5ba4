"""The key service's memory: records, names, aliases, unwrapped version keys, fast paths.

It is the one owner of the ordering and locking rules between the lifecycle verbs (writers)
and encrypt/decrypt (readers, on the event loop shared by the API and Kopf):

1. **Writers are serialized** by :meth:`KeyIndex.writing`, held across the store's commit.
   Writers are the lifecycle verbs; they run in threads, never on the event loop.
2. **Readers take no lock.** What they read is immutable: one :class:`Entry` per key holds the
   record, the AEADs of the versions that have material, and the encrypt hit, which carries its
   own AEAD. A reader therefore never meets a hit whose AEAD is gone.
3. **A writer publishes in this order**: drop the names, aliases and decrypt hits the new record
   no longer allows; swap the key's entry; add what the new record allows. A reader sees the
   state before the write or the state after it, never something neither allowed; and since
   readers never add to the index, nothing stale is put back after a write.
4. **Only writers fill it**, with one exception: a reader that needs an AEAD not loaded yet
   (before :meth:`KeyIndex.warm`) loads it, and keeps it only if it can take the writer lock
   without waiting.

The fast paths hold only versions usable without a clock read (Enabled, attached key; version
with material and no ``validTo``), so using them skips no check. Every map is keyed by what the
store holds (key ids, names, aliases, header prefixes of real versions), never by caller text;
the namespace UIDs seen are an LRU of :data:`MAX_NAMESPACES`. :meth:`KeyIndex.sizes` counts it.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass

from kms_operator.crypto import blob as blobs
from kms_operator.crypto import primitives
from kms_operator.errors import KeyPendingImport
from kms_operator.store.records import KeyRecord, KeyState, VersionRecord, VersionState

log = logging.getLogger(__name__)

#: Namespace UIDs remembered (to detach keys of an earlier namespace of the same name). One
#: forgotten costs a scan of the keys at its next observation, nothing else.
MAX_NAMESPACES = 4096

#: (version, header prefix, AEAD) of a key's current version.
EncryptHit = tuple[int, bytes, primitives.Aead]
#: (key id, version, AEAD) of a blob header prefix.
DecryptHit = tuple[uuid.UUID, int, primitives.Aead]
LoadMaterial = Callable[[uuid.UUID, int], bytes | None]


@dataclass(frozen=True, slots=True)
class Entry:
    """One key as readers see it; never changed once published (a write swaps it)."""

    record: KeyRecord
    #: The unwrapped keys of versions with material (a dict nobody mutates after publication).
    aeads: Mapping[int, primitives.Aead]
    #: Set when encrypting under the current version needs no check at all.
    encrypt_hit: EncryptHit | None


def _fast(record: KeyRecord, version: VersionRecord) -> bool:
    return (
        record.state is KeyState.ENABLED
        and not record.is_detached
        and version.state is VersionState.ENABLED
        and version.expires_at is None
    )


def _is_named(record: KeyRecord) -> bool:
    return record.state is not KeyState.DESTROYED and not record.is_detached


def _decrypt_hits(entry: Entry | None) -> dict[bytes, DecryptHit]:
    if entry is None:
        return {}
    record = entry.record
    hits = {}
    for version in record.versions:
        aead = entry.aeads.get(version.version)
        if aead is not None and _fast(record, version):
            prefix = blobs.header_prefix(record.key_id, version.version)
            hits[prefix] = (record.key_id, version.version, aead)
    return hits


def _names(entry: Entry | None) -> tuple[tuple[str, str] | None, set[tuple[str, str]]]:
    """The (namespace, name) binding and the (namespace, alias) pairs the entry holds."""
    if entry is None or not _is_named(entry.record):
        return None, set()
    record = entry.record
    return (record.namespace, record.name), {(record.namespace, a) for a in record.aliases}


class KeyIndex:
    """Every key's record and usable version keys, with lock-free reads (see the module)."""

    def __init__(self, records: Iterable[KeyRecord], load_material: LoadMaterial) -> None:
        self._load_material = load_material
        self._lock = threading.RLock()
        self._entries: dict[uuid.UUID, Entry] = {}
        self._by_name: dict[tuple[str, str], uuid.UUID] = {}
        self._by_alias: dict[tuple[str, str], uuid.UUID] = {}
        self._decrypt_hits: dict[bytes, DecryptHit] = {}
        self._namespace_uids: OrderedDict[str, str] = OrderedDict()
        with self._lock:
            for record in records:
                self.publish(record)

    def __repr__(self) -> str:
        return f"KeyIndex(keys={len(self._entries)})"

    def writing(self) -> AbstractContextManager[bool]:
        """The writer lock: hold it from reading the record to publishing its successor."""
        return self._lock

    # -- reads: no lock --------------------------------------------------------------------

    def entry(self, key_id: uuid.UUID) -> Entry | None:
        return self._entries.get(key_id)

    def get(self, key_id: uuid.UUID) -> KeyRecord | None:
        entry = self._entries.get(key_id)
        return None if entry is None else entry.record

    def records(self) -> list[KeyRecord]:
        return [entry.record for entry in self._entries.copy().values()]

    def named(self, namespace: str, name: str) -> uuid.UUID | None:
        return self._by_name.get((namespace, name))

    def aliased(self, namespace: str, alias: str) -> uuid.UUID | None:
        return self._by_alias.get((namespace, alias))

    def decrypt_hit(self, prefix: bytes) -> DecryptHit | None:
        return self._decrypt_hits.get(prefix)

    def aead(self, entry: Entry, version: int) -> primitives.Aead:
        """The AEAD of ``version``, loaded from the store if this entry does not hold it yet."""
        aead = entry.aeads.get(version)
        if aead is not None:
            return aead
        record = entry.record
        material = self._load_material(record.key_id, version)
        if material is None:
            # The record says Enabled but the store has no material: never guess.
            raise KeyPendingImport(
                f"key {record.namespace}/{record.name} version {version} has no material"
            )
        aead = primitives.Aead(material)
        if self._lock.acquire(blocking=False):  # keep it only if no writer is busy: no wait
            try:
                if self._entries.get(record.key_id) is entry:
                    self._install(entry, self._entry(record, {**entry.aeads, version: aead}))
            finally:
                self._lock.release()
        return aead

    def aeads(self) -> list[primitives.Aead]:
        return [a for entry in self._entries.copy().values() for a in entry.aeads.values()]

    def sizes(self) -> dict[str, int]:
        """How many entries each map holds (tests check that caller input grows none)."""
        entries = list(self._entries.copy().values())
        return {
            "entries": len(entries),
            "aeads": sum(len(e.aeads) for e in entries),
            "encrypt_hits": sum(e.encrypt_hit is not None for e in entries),
            "decrypt_hits": len(self._decrypt_hits),
            "names": len(self._by_name),
            "aliases": len(self._by_alias),
            "namespace_uids": len(self._namespace_uids),
        }

    # -- writes: with writing() held -------------------------------------------------------

    def publish(self, record: KeyRecord, material: Mapping[int, bytes] | None = None) -> None:
        """Show ``record`` (just committed to the store) and the AEADs of ``material``.

        AEADs of versions that lost their material (dropped, expired, destroyed) go with it.
        """
        old = self._entries.get(record.key_id)
        aeads: dict[int, primitives.Aead] = {}
        if record.state is not KeyState.DESTROYED:
            if old is not None:
                for number, aead in old.aeads.items():
                    version = record.version(number)
                    if version is not None and version.state is VersionState.ENABLED:
                        aeads[number] = aead
            for number, secret in (material or {}).items():
                aeads[number] = primitives.Aead(secret)
        self._install(old, self._entry(record, aeads))

    def warm(self) -> None:
        """Unwrap every usable version now, so no request pays a store read."""
        with self._lock:
            for entry in list(self._entries.values()):
                material = self._missing_material(entry.record, entry.aeads)
                if material:
                    self.publish(entry.record, material)

    def reload(self, records: Iterable[KeyRecord]) -> int:
        """Publish the store's records again (another process wrote the store) and unwrap the
        usable versions this index does not hold yet; return how many keys changed.

        Each key is published like any write (rule 3). An AEAD already held stays: a version's
        material never changes while it has any (only the same material can be imported
        again). Keys never leave a store (destroyed ones stay as tombstones), so none is
        removed here.
        """
        changed = 0
        with self._lock:
            for record in records:
                old = self._entries.get(record.key_id)
                if old is not None and old.record == record:
                    continue
                held = {} if old is None else old.aeads
                self.publish(record, self._missing_material(record, held))
                changed += 1
        return changed

    def _missing_material(
        self, record: KeyRecord, held: Mapping[int, primitives.Aead]
    ) -> dict[int, bytes]:
        """The material of the record's usable versions that ``held`` lacks, from the store."""
        if record.state is KeyState.DESTROYED:
            return {}
        found: dict[int, bytes] = {}
        for version in record.versions:
            if version.state is not VersionState.ENABLED or version.version in held:
                continue
            material = self._load_material(record.key_id, version.version)
            if material is None:
                log.warning(
                    "key %s version %d is Enabled but the store has no material",
                    record.key_id,
                    version.version,
                )
                continue
            found[version.version] = material
        return found

    def namespace_uid(self, namespace: str) -> str | None:
        return self._namespace_uids.get(namespace)

    def remember_namespace(self, namespace: str, uid: str) -> None:
        self._namespace_uids[namespace] = uid
        self._namespace_uids.move_to_end(namespace)
        while len(self._namespace_uids) > MAX_NAMESPACES:
            self._namespace_uids.popitem(last=False)

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _entry(record: KeyRecord, aeads: dict[int, primitives.Aead]) -> Entry:
        current = record.versions[-1]
        aead = aeads.get(current.version)
        hit: EncryptHit | None = None
        if aead is not None and _fast(record, current):
            hit = (current.version, blobs.header_prefix(record.key_id, current.version), aead)
        return Entry(record, aeads, hit)

    def _install(self, old: Entry | None, new: Entry) -> None:
        """Swap ``old`` for ``new`` in the order of rule 3 (drop, swap, add)."""
        key_id = new.record.key_id
        old_binding, old_aliases = _names(old)
        new_binding, new_aliases = _names(new)
        old_hits, new_hits = _decrypt_hits(old), _decrypt_hits(new)
        if (
            old_binding is not None
            and old_binding != new_binding
            and self._by_name.get(old_binding) == key_id
        ):
            del self._by_name[old_binding]
        for alias in old_aliases - new_aliases:
            if self._by_alias.get(alias) == key_id:
                del self._by_alias[alias]
        for prefix, hit in old_hits.items():
            if new_hits.get(prefix) != hit:
                self._decrypt_hits.pop(prefix, None)
        self._entries[key_id] = new
        if new_binding is not None:
            self._by_name[new_binding] = key_id
        for alias in new_aliases:
            self._by_alias[alias] = key_id
        self._decrypt_hits.update(new_hits)

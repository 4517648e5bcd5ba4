"""The lifecycle service: one method per verb of DESIGN.md section 2.

It is the only writer of the store, so it keeps every key's record (never its material) and the
unwrapped version keys in memory, in a :class:`~kms_operator.keys.index.KeyIndex`: encrypt and
decrypt touch no disk and take no lock. Each verb, holding the index's writer lock (in a
thread), computes the next record, writes it in one store transaction, then publishes it to the
index; a crash between the two loses nothing because the index is rebuilt from the store.

Destruction waits on two clocks: the wall clock (``deletion_date``) and the store's elapsed
time (:mod:`kms_operator.keys.elapsed`), so a forward step of the wall clock destroys nothing
early.
"""

from __future__ import annotations

import base64
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kms_operator.crypto import blob as blobs
from kms_operator.crypto import primitives, wrapping
from kms_operator.errors import (
    AliasConflict,
    DefaultKeyProtected,
    ExpiredImportToken,
    IncorrectKeyMaterial,
    InvalidCiphertext,
    InvalidImportToken,
    InvalidRequest,
    KeyBoundElsewhere,
    KeyDisabled,
    KeyPendingDeletion,
    KeyPendingImport,
    KeyStateError,
    NotFound,
)
from kms_operator.store.base import KeyStore
from kms_operator.store.records import (
    ImportParameters,
    KeyRecord,
    KeyState,
    Origin,
    VersionRecord,
    VersionState,
)
from kms_operator.timestamps import rfc3339

from .clock import Clock, SystemClock, Timescale
from .elapsed import ElapsedTime
from .index import Entry, KeyIndex

log = logging.getLogger(__name__)

ALIAS_PREFIX = "alias/"
DEFAULT_ALIAS_PREFIX = "alias/kms/"
_ALIAS_PATTERN = re.compile(r"^alias/[a-zA-Z0-9/_-]{1,250}$")
#: The one spelling of a key id: lower-case, hyphenated (``str(uuid.UUID(...))``). Braces,
#: ``urn:uuid:`` prefixes, upper case or missing dashes name no key.
_KEY_ID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_PLAINTEXT = blobs.MAX_PLAINTEXT
MATERIAL_SIZE = 32
PENDING_WINDOW_DAYS = (7, 30)
DEFAULT_PENDING_WINDOW_DAYS = 30
ROTATION_PERIOD_DAYS = (90, 2560)
RANDOM_BYTES = (1, 1024)
IMPORT_PARAMETERS_VALID_DAYS = 1
MAX_MATERIAL_VALIDITY_DAYS = 365
DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16}

_VersionFilter = Callable[[VersionRecord], bool]


@dataclass(frozen=True, slots=True)
class EncryptResult:
    ciphertext_blob: bytes = field(repr=False)
    key_id: uuid.UUID
    key_version: int


@dataclass(frozen=True, slots=True)
class DecryptResult:
    plaintext: bytes = field(repr=False)
    key_id: uuid.UUID
    key_version: int


@dataclass(frozen=True, slots=True)
class DataKeyResult:
    ciphertext_blob: bytes = field(repr=False)
    plaintext: bytes | None = field(repr=False)
    key_id: uuid.UUID
    key_version: int


@dataclass(frozen=True, slots=True)
class ReEncryptResult:
    ciphertext_blob: bytes = field(repr=False)
    key_id: uuid.UUID
    key_version: int
    source_key_id: uuid.UUID
    source_key_version: int


def validate_alias(alias: str) -> None:
    if not _ALIAS_PATTERN.match(alias):
        raise InvalidRequest(
            f"alias {alias!r} must look like alias/<name> with letters, digits, '/', '_' or '-'",
            field="aliases",
        )


def refuse_state(record: KeyRecord, operation: str) -> KeyStateError:
    """The error for using a key in a state other than Enabled; it names the state."""
    state = record.state
    message = (
        f"key {record.namespace}/{record.name} ({record.key_id}) is {state}: {operation} refused"
    )
    if state is KeyState.DISABLED:
        return KeyDisabled(message)
    if state is KeyState.PENDING_IMPORT:
        return KeyPendingImport(message)
    if state is KeyState.PENDING_DELETION:
        return KeyPendingDeletion(f"{message}; deletion is scheduled for {record.deletion_date}")
    return KeyStateError(message)


class KeyService:
    """The KMS: every lifecycle verb and every crypto operation, over one ``KeyStore``."""

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
        self._index = KeyIndex(store.list_keys(), store.load_material)
        self.elapsed = ElapsedTime(self.clock, store)

    def __repr__(self) -> str:
        return f"KeyService({self._store!r}, keys={len(self._index.records())})"

    # -- reading -------------------------------------------------------------------------

    def warm_cache(self) -> None:
        """Unwrap every usable version now, so the first request pays no store read."""
        self._index.warm()

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

    def _entry_in(self, namespace: str, reference: str | uuid.UUID) -> Entry:
        key_id: uuid.UUID | None
        if isinstance(reference, uuid.UUID):
            key_id = reference
        elif reference.startswith(ALIAS_PREFIX):
            key_id = self._index.aliased(namespace, reference)
        else:
            key_id = self._index.named(namespace, reference)
            if key_id is None and _KEY_ID_PATTERN.match(reference):
                key_id = uuid.UUID(reference)
        entry = None if key_id is None else self._index.entry(key_id)
        if entry is None or entry.record.namespace != namespace or entry.record.is_detached:
            raise NotFound(f"no key {str(reference)!r} in namespace {namespace!r}")
        return entry

    def key_of_blob(self, ciphertext_blob: bytes) -> KeyRecord:
        """The key a blob names in its header; unknown keys are an ``InvalidCiphertext``."""
        header = blobs.parse_header(ciphertext_blob)
        record = self._index.get(header.key_id)
        if record is None or record.is_detached:
            log.debug("invalid ciphertext: unknown or detached key id %s", header.key_id)
            raise InvalidCiphertext()
        return record

    def next_deadline(self, key_id: uuid.UUID) -> datetime | None:
        """The earliest date at which time alone changes this key (deletion, rotation, expiry).

        For a deletion, the wall-clock date at which both of its measures will have passed:
        the later of ``deletion_date`` and now plus what is left of the window on the
        elapsed measure. Called on the event loop: it never waits (the elapsed time is
        persisted by a background thread when due).
        """
        record = self.get(key_id)
        self.elapsed.keep(wait=False)
        if record.state is KeyState.DESTROYED:
            return None
        if record.deletion_date is not None:
            return self.elapsed.destruction_date(record, self.clock.now())
        dates = [v.expires_at for v in record.versions if v.expires_at is not None]
        if record.next_rotation_at is not None and record.state is KeyState.ENABLED:
            dates.append(record.next_rotation_at)
        return min(dates, default=None)

    # -- lifecycle -----------------------------------------------------------------------

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
    ) -> KeyRecord:
        """Create the key bound to ``namespace/name``; return the existing one if bound already.

        Idempotent on purpose: the operator retries after a crash, and must find the key it
        created instead of making a second one.
        """
        with self._index.writing():
            existing = self.find(namespace, name)
            if existing is not None:
                return existing
            key_id = uuid.uuid4()
            self._check_aliases(namespace, key_id, aliases, default_service is not None)
            if rotation_period_days is not None:
                self._check_rotation_period(origin, rotation_period_days)
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

    def ensure_default_key(self, namespace: str, service: str, name: str) -> KeyRecord:
        """The namespace's default key for ``service``, created on first need."""
        alias = f"{DEFAULT_ALIAS_PREFIX}{service}"
        with self._index.writing():
            key_id = self._index.aliased(namespace, alias)
            if key_id is not None:
                return self.get(key_id)
            record = self.create_key(
                namespace,
                name,
                aliases=(alias,),
                description=f"Default key for {service} in namespace {namespace}",
                default_service=service,
            )
            if record.default_service != service:
                # create_key is idempotent per name: it returned someone else's key.
                raise AliasConflict(
                    f"a key named {namespace}/{name} ({record.key_id}) already exists and is "
                    f"not the default key for {service}"
                )
            return record

    def bind(
        self,
        namespace: str,
        name: str,
        *,
        namespace_uid: str,
        object_uid: str,
        claimed_key_id: uuid.UUID | None = None,
    ) -> KeyRecord | None:
        """The key the object ``namespace/name`` (with these UIDs) holds; None: it holds none.

        A key passes to a new object only within the same namespace (same UID), and only when
        it is the same object or the object claims the key by id (``claimed_key_id``: the
        ``kms.cmk.dev/key-id`` annotation the operator puts on objects it recreates, or the
        object's own ``status.keyId``). A key of an earlier namespace of the same name is
        detached and None is returned, so the new tenant gets a new key. A key of an earlier
        object in the same namespace that the new one does not claim is
        :class:`KeyBoundElsewhere`: nothing is created or adopted without the user's word.
        Keys written before schema 2 carry no UIDs; they are adopted only by a claim.
        """
        with self._index.writing():
            self.observe_namespace(namespace, namespace_uid)
            record = self.find(namespace, name)
            if record is None and claimed_key_id is not None:
                claimed = self._index.get(claimed_key_id)
                if (
                    claimed is not None
                    and claimed.is_detached
                    and claimed.state is not KeyState.DESTROYED
                    and (claimed.namespace, claimed.name) == (namespace, name)
                    and claimed.namespace_uid in (None, namespace_uid)
                ):
                    record = claimed
            if record is None:
                return None
            claimed_here = claimed_key_id == record.key_id
            if record.object_uid != object_uid and not claimed_here:
                if record.object_uid is None:
                    # Written before schema 2: only the object that holds its id may adopt it.
                    self._detach(record, "unclaimed after the upgrade to schema 2")
                    return None
                raise KeyBoundElsewhere(
                    f"key {record.key_id} ({record.state}) belongs to an earlier object named "
                    f"{namespace}/{name}; annotate kms.cmk.dev/key-id={record.key_id} to take "
                    "it over"
                )
            if (record.namespace_uid, record.object_uid, record.detached_at) == (
                namespace_uid,
                object_uid,
                None,
            ):
                return record
            log.info(
                "key %s bound to object %s of %s/%s", record.key_id, object_uid, namespace, name
            )
            return self._save(
                record.evolve(namespace_uid=namespace_uid, object_uid=object_uid, detached_at=None)
            )

    def observe_namespace(self, namespace: str, uid: str) -> list[KeyRecord]:
        """Record the namespace's current UID; detach and return the keys of an earlier one."""
        with self._index.writing():
            if self._index.namespace_uid(namespace) == uid:
                return []
            self._index.remember_namespace(namespace, uid)
            stale = [
                r
                for r in self._index.records()
                if r.namespace == namespace
                and r.namespace_uid not in (None, uid)
                and not r.is_detached
                and r.state is not KeyState.DESTROYED
            ]
            return [self._detach(r, "its namespace was deleted and created again") for r in stale]

    def _detach(self, record: KeyRecord, why: str) -> KeyRecord:
        log.warning(
            "key %s of %s/%s detached (%s): it answers no name or alias and keeps its schedule",
            record.key_id,
            record.namespace,
            record.name,
            why,
        )
        return self._save(record.evolve(detached_at=self.clock.now(), aliases=()))

    def set_enabled(self, key_id: uuid.UUID, enabled: bool) -> KeyRecord:
        with self._index.writing():
            record = self._live(key_id, "enable" if enabled else "disable")
            if record.enabled == enabled:
                return record
            if not enabled and record.is_default:
                raise DefaultKeyProtected(
                    f"key {record.namespace}/{record.name} is a default key and cannot be disabled"
                )
            return self._save(record.evolve(enabled=enabled))

    def set_description(self, key_id: uuid.UUID, description: str) -> KeyRecord:
        with self._index.writing():
            record = self._live(key_id, "describe")
            if record.description == description:
                return record
            return self._save(record.evolve(description=description))

    def set_aliases(self, key_id: uuid.UUID, aliases: Sequence[str]) -> KeyRecord:
        with self._index.writing():
            record = self._live(key_id, "set aliases")
            wanted = tuple(sorted(set(aliases)))
            if wanted == record.aliases:
                return record
            self._check_aliases(record.namespace, key_id, wanted, record.is_default)
            if record.is_default and not any(a.startswith(DEFAULT_ALIAS_PREFIX) for a in wanted):
                raise DefaultKeyProtected(
                    f"key {record.namespace}/{record.name} is a default key: its "
                    f"{DEFAULT_ALIAS_PREFIX}… alias cannot be removed"
                )
            return self._save(record.evolve(aliases=wanted))

    def set_rotation_period(self, key_id: uuid.UUID, days: int | None) -> KeyRecord:
        """Turn automatic rotation on (every ``days``), change it, or turn it off (None)."""
        with self._index.writing():
            record = self._live(key_id, "set rotation")
            if record.rotation_period_days == days:
                return record
            if days is not None:
                self._check_rotation_period(record.origin, days)
            now = self.clock.now()
            return self._save(
                record.evolve(
                    rotation_period_days=days,
                    next_rotation_at=None if days is None else now + self.timescale.days(days),
                )
            )

    def rotate(self, key_id: uuid.UUID) -> KeyRecord:
        """On-demand rotation: a new current version; older ones still decrypt."""
        with self._index.writing():
            record = self.get(key_id)
            if record.is_default:
                raise DefaultKeyProtected(
                    f"key {record.namespace}/{record.name} is a default key and cannot be "
                    "rotated on demand"
                )
            return self._rotate(record, scheduled=False)

    def rotate_if_due(self, key_id: uuid.UUID) -> KeyRecord | None:
        """Automatic rotation when ``next_rotation_at`` has passed; None when not due."""
        with self._index.writing():
            record = self.get(key_id)
            due = record.next_rotation_at
            if due is None or record.state is not KeyState.ENABLED or self.clock.now() < due:
                return None
            return self._rotate(record, scheduled=True)

    def _rotate(self, record: KeyRecord, *, scheduled: bool) -> KeyRecord:
        if record.origin is Origin.EXTERNAL:
            raise InvalidRequest(
                f"key {record.namespace}/{record.name} has EXTERNAL origin: it rotates only by "
                "importing new material (a new KeyMaterialImport)",
                field="origin",
            )
        if record.state is not KeyState.ENABLED:
            raise refuse_state(record, "rotation")
        now = self.clock.now()
        number = record.current_version + 1
        material = primitives.random_bytes(MATERIAL_SIZE)
        changes: dict[str, object] = {
            "versions": (*record.versions, VersionRecord(number, now, VersionState.ENABLED)),
            "last_rotated_at": now,
        }
        if scheduled and record.rotation_period_days:
            changes["next_rotation_at"] = now + self.timescale.days(record.rotation_period_days)
        updated = self._save(record.evolve(**changes), add_material={number: material})
        log.info(
            "rotated key %s to version %d (%s)",
            record.key_id,
            number,
            "scheduled" if scheduled else "on demand",
        )
        return updated

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
            low, high = PENDING_WINDOW_DAYS
            if not low <= pending_window_days <= high:
                raise InvalidRequest(
                    f"pendingWindowDays must be between {low} and {high}, "
                    f"got {pending_window_days}",
                    field="pendingWindowDays",
                )
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

    def destroy_if_due(self, key_id: uuid.UUID) -> KeyRecord | None:
        """Crypto-shred every version once the window has passed; None when not due.

        Due means both: the wall clock has reached ``deletion_date``, and the store's elapsed
        time has advanced by the window since the request. A forward step of the wall clock
        satisfies only the first, a restart loses nothing of the second (it resumes from the
        value persisted), so a key is never destroyed early; at worst later.
        """
        self.elapsed.keep(wait=True)
        with self._index.writing():
            record = self.get(key_id)
            if record.deletion_date is None or record.state is KeyState.DESTROYED:
                return None
            now = self.clock.now()
            if now < record.deletion_date:
                return None
            if not self.elapsed.destruction_due(record, now):
                log.info(
                    "key %s: the wall clock passed its deletion date, but not the time elapsed "
                    "since the request (the clock was stepped, or the operator was down): "
                    "waiting",
                    key_id,
                )
                return None
            destroyed = record.evolve(
                destroyed_at=now,
                enabled=False,
                aliases=(),
                versions=tuple(
                    VersionRecord(v.version, v.created_at, VersionState.DESTROYED)
                    for v in record.versions
                ),
            )
            elapsed = self.elapsed.now_us()
            self._store.destroy(destroyed, elapsed_us=elapsed)
            self.elapsed.persisted(elapsed)
            self._index.publish(destroyed)
            log.info("key %s destroyed: every version's material was removed", key_id)
            return destroyed

    # -- imported material ---------------------------------------------------------------

    def create_import_parameters(
        self,
        key_id: uuid.UUID,
        algorithm: wrapping.WrappingAlgorithm,
        key_spec: wrapping.WrappingKeySpec,
    ) -> ImportParameters:
        """A wrapping public key and an import token, valid for one day."""
        with self._index.writing():
            record = self._importable(key_id)
            private_pem, public_pem = wrapping.generate_wrapping_key(key_spec)
            now = self.clock.now()
            params = ImportParameters(
                token="kmsit1_"
                + base64.urlsafe_b64encode(primitives.random_bytes(24)).decode().rstrip("="),
                key_id=record.key_id,
                wrapping_algorithm=algorithm.value,
                wrapping_key_spec=key_spec.value,
                public_key_pem=public_pem.decode(),
                expires_at=now + self.timescale.days(IMPORT_PARAMETERS_VALID_DAYS),
            )
            self._store.save_import_parameters(params, private_pem, now=now)
            return params

    def import_material(
        self,
        key_id: uuid.UUID,
        import_token: str,
        encrypted_material: bytes,
        valid_to: datetime | None = None,
    ) -> tuple[KeyRecord, int]:
        """Import wrapped material; return the key and the version it now backs.

        * the same material as a version's (by fingerprint) restores that version;
        * a key that never had material takes it as version 1;
        * new material for a key whose current version has material is a new version
          (EXTERNAL keys rotate this way);
        * different material for a key whose current version lost its own is refused: only
          the original material can bring back what was encrypted under it.
        """
        with self._index.writing():
            record = self._importable(key_id)
            loaded = self._store.load_import_parameters(import_token)
            if loaded is None or loaded[0].key_id != key_id:
                raise InvalidImportToken(
                    f"the import token is not one issued for key {record.namespace}/{record.name}"
                )
            params, private_pem = loaded
            now = self.clock.now()
            if now >= params.expires_at:
                raise ExpiredImportToken(
                    f"the import parameters expired at {rfc3339(params.expires_at)}; "
                    "request new ones"
                )
            if valid_to is not None and not (
                now < valid_to <= now + self.timescale.days(MAX_MATERIAL_VALIDITY_DAYS)
            ):
                raise InvalidRequest(
                    f"validTo must be in the future and at most {MAX_MATERIAL_VALIDITY_DAYS} "
                    "days ahead",
                    field="validTo",
                )
            try:
                material = wrapping.unwrap_material(
                    wrapping.WrappingAlgorithm(params.wrapping_algorithm),
                    private_pem,
                    encrypted_material,
                )
            except wrapping.UnwrapFailed:
                raise IncorrectKeyMaterial(
                    "the encrypted key material does not unwrap with these import parameters "
                    f"({params.wrapping_algorithm}, {params.wrapping_key_spec})"
                ) from None
            if len(material) != MATERIAL_SIZE:
                raise IncorrectKeyMaterial(
                    f"key material must be {MATERIAL_SIZE} bytes, got {len(material)}"
                )
            return self._place_material(record, material, valid_to, now)

    def _place_material(
        self, record: KeyRecord, material: bytes, valid_to: datetime | None, now: datetime
    ) -> tuple[KeyRecord, int]:
        fingerprint = self._store.fingerprint(record.key_id, material)
        versions = list(record.versions)
        current = versions[-1]
        match = next((v for v in versions if v.fingerprint == fingerprint), None)
        if match is not None:
            number = match.version
        elif current.fingerprint is None:
            number = current.version
        elif current.state is VersionState.ENABLED:
            number = current.version + 1
            versions.append(VersionRecord(number, now, VersionState.PENDING_IMPORT))
        else:
            raise IncorrectKeyMaterial(
                f"key {record.namespace}/{record.name} version {current.version} lost its "
                "material: only that same material can be imported again"
            )
        previous = versions[number - 1]
        had_material = previous.state is VersionState.ENABLED
        versions[number - 1] = VersionRecord(
            number,
            previous.created_at,
            VersionState.ENABLED,
            fingerprint=fingerprint,
            imported_at=now,
            expires_at=valid_to,
        )
        changes: dict[str, object] = {"versions": tuple(versions)}
        if number > record.current_version:
            changes["last_rotated_at"] = now
        updated = self._save(
            record.evolve(**changes),
            add_material={} if had_material else {number: material},
        )
        log.info("imported material into key %s version %d", record.key_id, number)
        return updated, number

    def delete_imported_material(
        self, key_id: uuid.UUID, versions: Iterable[int] | None = None
    ) -> KeyRecord:
        """Drop imported material (all versions by default): they go to PendingImport."""
        with self._index.writing():
            record = self.get(key_id)
            if record.origin is not Origin.EXTERNAL:
                raise InvalidRequest(
                    f"key {record.namespace}/{record.name} has KMS origin: its material "
                    "cannot be deleted on its own",
                    field="origin",
                )
            wanted = None if versions is None else set(versions)
            return self._drop_material(
                record,
                lambda v: wanted is None or v.version in wanted,
            )

    def expire_material_if_due(self, key_id: uuid.UUID) -> KeyRecord | None:
        """Drop material whose ``validTo`` has passed; None when nothing expired.

        The wall clock alone decides: expiry can be undone (import the same material again),
        so unlike destruction it needs no second measure.
        """
        with self._index.writing():
            record = self.get(key_id)
            now = self.clock.now()
            if not any(
                v.expires_at is not None and v.expires_at <= now and v.state is VersionState.ENABLED
                for v in record.versions
            ):
                return None
            return self._drop_material(
                record, lambda v: v.expires_at is not None and v.expires_at <= now
            )

    def _drop_material(self, record: KeyRecord, selected: _VersionFilter) -> KeyRecord:
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

    # -- cryptography --------------------------------------------------------------------

    def encrypt(
        self,
        namespace: str,
        reference: str | uuid.UUID,
        plaintext: bytes,
        context: Mapping[str, str] | None = None,
    ) -> EncryptResult:
        if len(plaintext) > MAX_PLAINTEXT:
            raise InvalidRequest(
                f"plaintext is {len(plaintext)} bytes; at most {MAX_PLAINTEXT} are accepted",
                field="plaintext",
            )
        entry = self._entry_in(namespace, reference)
        hit = entry.encrypt_hit
        if hit is None:
            version = self._current_usable_version(entry.record, "encrypt")
            aead = self._index.aead(entry, version)
            prefix = blobs.header_prefix(entry.record.key_id, version)
        else:
            version, prefix, aead = hit
        return EncryptResult(
            blobs.seal_prefixed(aead, prefix, plaintext, context), entry.record.key_id, version
        )

    def decrypt(
        self, ciphertext_blob: bytes, context: Mapping[str, str] | None = None
    ) -> DecryptResult:
        prefix = blobs.header_prefix_of(ciphertext_blob)
        hit = self._index.decrypt_hit(prefix) if prefix is not None else None
        if hit is not None:
            key_id, number, aead = hit
            plaintext = blobs.open_prefixed(aead, ciphertext_blob, context)
            return DecryptResult(plaintext, key_id, number)
        header = blobs.parse_header(ciphertext_blob)
        entry = self._index.entry(header.key_id)
        if entry is None or entry.record.is_detached:
            log.debug("invalid ciphertext: unknown or detached key id %s", header.key_id)
            raise InvalidCiphertext()
        record, version = entry.record, header.version
        self._require_usable(record, "decrypt")
        found = record.version(version)
        if found is None or found.state is VersionState.DESTROYED:
            log.debug("invalid ciphertext: key %s has no version %d", record.key_id, version)
            raise InvalidCiphertext()
        if not self._version_usable(found):
            raise KeyPendingImport(
                f"key {record.namespace}/{record.name} version {version} has no material: "
                "import the same material again to decrypt"
            )
        aead = self._index.aead(entry, version)
        plaintext = blobs.open_sealed(aead, ciphertext_blob, context, header=header)
        return DecryptResult(plaintext, record.key_id, version)

    def generate_data_key(
        self,
        namespace: str,
        reference: str | uuid.UUID,
        *,
        key_spec: str | None = None,
        number_of_bytes: int | None = None,
        context: Mapping[str, str] | None = None,
        with_plaintext: bool = True,
    ) -> DataKeyResult:
        size = data_key_size(key_spec, number_of_bytes)
        plaintext = primitives.random_bytes(size)
        sealed = self.encrypt(namespace, reference, plaintext, context)
        return DataKeyResult(
            sealed.ciphertext_blob,
            plaintext if with_plaintext else None,
            sealed.key_id,
            sealed.key_version,
        )

    def re_encrypt(
        self,
        ciphertext_blob: bytes,
        destination_namespace: str,
        destination_reference: str | uuid.UUID,
        *,
        source_context: Mapping[str, str] | None = None,
        destination_context: Mapping[str, str] | None = None,
    ) -> ReEncryptResult:
        # Resolve the destination first, so a wrong destination costs no decryption; then
        # encrypt under exactly that key (an alias moved meanwhile changes nothing).
        destination = self.resolve(destination_namespace, destination_reference)
        opened = self.decrypt(ciphertext_blob, source_context)
        sealed = self.encrypt(
            destination_namespace, destination.key_id, opened.plaintext, destination_context
        )
        return ReEncryptResult(
            sealed.ciphertext_blob,
            sealed.key_id,
            sealed.key_version,
            opened.key_id,
            opened.key_version,
        )

    @staticmethod
    def random(number_of_bytes: int) -> bytes:
        low, high = RANDOM_BYTES
        if not low <= number_of_bytes <= high:
            raise InvalidRequest(
                f"numberOfBytes must be between {low} and {high}", field="numberOfBytes"
            )
        return primitives.random_bytes(number_of_bytes)

    # -- internals -----------------------------------------------------------------------

    def _current_usable_version(self, record: KeyRecord, operation: str) -> int:
        self._require_usable(record, operation)
        current = record.versions[-1]
        if not self._version_usable(current):
            raise KeyPendingImport(
                f"key {record.namespace}/{record.name} material expired: {operation} refused"
            )
        return current.version

    @staticmethod
    def _require_usable(record: KeyRecord, operation: str) -> None:
        if record.state is not KeyState.ENABLED:
            raise refuse_state(record, operation)

    def _version_usable(self, version: VersionRecord) -> bool:
        if version.state is not VersionState.ENABLED:
            return False
        # Material past its validTo is refused at once, even before the timer deletes it.
        return version.expires_at is None or self.clock.now() < version.expires_at

    def _live(self, key_id: uuid.UUID, operation: str) -> KeyRecord:
        """A key that is neither pending deletion nor destroyed, for spec changes."""
        record = self.get(key_id)
        if record.state in (KeyState.PENDING_DELETION, KeyState.DESTROYED):
            raise refuse_state(record, operation)
        return record

    def _importable(self, key_id: uuid.UUID) -> KeyRecord:
        record = self._live(key_id, "import")
        if record.is_default:
            raise DefaultKeyProtected(
                f"key {record.namespace}/{record.name} is a default key and cannot be given "
                "imported material"
            )
        if record.origin is not Origin.EXTERNAL:
            raise InvalidRequest(
                f"key {record.namespace}/{record.name} has KMS origin: only EXTERNAL keys take "
                "imported material",
                field="keyRef",
            )
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

    @staticmethod
    def _check_rotation_period(origin: Origin, days: int) -> None:
        if origin is Origin.EXTERNAL:
            raise InvalidRequest(
                "EXTERNAL keys rotate only by importing new material: rotation.periodDays "
                "is not allowed",
                field="rotation.periodDays",
            )
        low, high = ROTATION_PERIOD_DAYS
        if not low <= days <= high:
            raise InvalidRequest(
                f"rotation.periodDays must be between {low} and {high}, got {days}",
                field="rotation.periodDays",
            )

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


def data_key_size(key_spec: str | None, number_of_bytes: int | None) -> int:
    if key_spec is not None and number_of_bytes is not None:
        raise InvalidRequest("give keySpec or numberOfBytes, not both", field="numberOfBytes")
    if number_of_bytes is not None:
        low, high = RANDOM_BYTES
        if not low <= number_of_bytes <= high:
            raise InvalidRequest(
                f"numberOfBytes must be between {low} and {high}", field="numberOfBytes"
            )
        return number_of_bytes
    spec = key_spec or "AES_256"
    if spec not in DATA_KEY_SPECS:
        raise InvalidRequest(f"keySpec must be one of {', '.join(DATA_KEY_SPECS)}", field="keySpec")
    return DATA_KEY_SPECS[spec]

"""Crash safety of the store (DESIGN.md section 5): SIGKILL at every fault point.

A child process opens a copy of a prepared store, arms ``kms_operator.store.sqlite.fault_hook``
to SIGKILL itself at one named point, and runs one lifecycle operation through ``KeyService``.
The parent reopens the store and checks that it holds exactly the state before the operation or
after it, never a mix; that ``PRAGMA integrity_check`` is ok; that a fresh ``KeyService`` decrypts
what was encrypted before the crash; and that retrying the operation finishes the work.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.support.changes import rotate
from tests.support.clocks import ManualClock

from kms_operator.crypto import wrapping
from kms_operator.errors import KeyStateError
from kms_operator.keys.service import KeyService, KeySettings
from kms_operator.store import sqlite as sqlite_store
from kms_operator.store.records import KeyRecord, KeyState, Origin, VersionRecord, VersionState
from kms_operator.store.rootkey import load_root_key_file
from kms_operator.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.unit

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PENDING_WINDOW_DAYS = 7
IMPORTED_MATERIAL = bytes(range(64, 96))
NEW_KEY = ("team-a", "created-in-crash")
#: The spec the "apply" case applies (with a rotation on demand) to the rotating key.
APPLIED = KeySettings("applied in a crash", True, ("alias/applied", "alias/rotating"), 90)

# Every fault point of sqlite.py, plus two of ours: "checkpoint" (SIGKILL after a destroy
# committed, before the WAL is folded in and truncated) and "after" (SIGKILL once the operation
# returned, with the store never closed).
CASES: list[tuple[str, str]] = [
    ("create", "create:key-row"),
    ("create", "create:versions"),
    ("create", "create:material"),
    ("create", "after"),
    ("rotate", "update:key-row"),
    ("rotate", "update:versions"),
    ("rotate", "update:material"),
    ("rotate", "after"),
    ("apply", "update:key-row"),  # a whole spec and a rotation, in one transaction
    ("apply", "update:versions"),
    ("apply", "update:material"),
    ("apply", "after"),
    ("import", "update:key-row"),
    ("import", "update:versions"),
    ("import", "update:material"),
    ("import", "after"),
    ("destroy", "update:key-row"),  # in schedule_deletion
    ("destroy", "update:versions"),
    ("destroy", "update:material"),
    ("destroy", "destroy:material"),
    ("destroy", "destroy:key-row"),
    ("destroy", "checkpoint"),
    ("destroy", "after"),
]

CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, uuid
    from datetime import datetime, timedelta
    from pathlib import Path

    from kms_operator.keys.service import KeyService, KeySettings
    from kms_operator.store import sqlite as sqlite_store
    from kms_operator.store.rootkey import load_root_key_file

    args = json.loads(sys.argv[1])
    point = args["point"]


    class Clock:
        def __init__(self, now):
            self.value = now
            self.monotonic = 0

        def now(self):
            return self.value

        def monotonic_ns(self):
            return self.monotonic

        def advance(self, delta):
            self.value += delta
            self.monotonic += int(delta.total_seconds()) * 10**9


    def die(*_):
        os.kill(os.getpid(), signal.SIGKILL)


    def hook(name):
        if name == point:
            die()


    clock = Clock(datetime.fromisoformat(args["now"]))
    root_key = load_root_key_file(Path(args["root_key"]), create=False)
    store = sqlite_store.SqliteKeyStore(Path(args["db"]), root_key)
    service = KeyService(store, clock=clock)
    sqlite_store.fault_hook = hook
    if point == "checkpoint":
        sqlite_store.SqliteKeyStore._checkpoint = die

    op = args["op"]
    if op == "create":
        service.create_key(args["namespace"], args["name"], aliases=["alias/crash"])
    elif op == "rotate":
        key = service.get(uuid.UUID(args["key_id"]))
        kept = KeySettings(key.description, key.enabled, key.aliases, key.rotation_period_days)
        service.apply_spec(key.key_id, kept, rotate=True)
    elif op == "apply":
        service.apply_spec(uuid.UUID(args["key_id"]), KeySettings(**args["spec"]), rotate=True)
    elif op == "import":
        service.import_material(
            uuid.UUID(args["key_id"]), args["token"], bytes.fromhex(args["wrapped"])
        )
    elif op == "destroy":
        key_id = uuid.UUID(args["key_id"])
        service.schedule_deletion(key_id, args["window"])
        clock.advance(timedelta(days=args["window"] + 1))
        service.run_due(clock.now())
    else:
        sys.exit(2)
    if point == "after":
        die()
    print("the fault point", point, "was never reached", file=sys.stderr)
    sys.exit(3)
    """
)


@dataclass(frozen=True)
class Snapshot:
    records: dict[uuid.UUID, KeyRecord]
    materials: dict[tuple[uuid.UUID, int], bytes] = field(repr=False)

    @classmethod
    def of(cls, store: SqliteKeyStore) -> Snapshot:
        records = {r.key_id: r for r in store.list_keys()}
        materials = {}
        for record in records.values():
            for version in record.versions:
                found = store.load_material(record.key_id, version.version)
                if found is not None:
                    materials[(record.key_id, version.version)] = found
        return cls(records, materials)

    def without(self, key_id: uuid.UUID) -> Snapshot:
        return Snapshot(
            {k: r for k, r in self.records.items() if k != key_id},
            {k: m for k, m in self.materials.items() if k[0] != key_id},
        )


@dataclass(frozen=True)
class Sealed:
    key_id: uuid.UUID
    blob: bytes = field(repr=False)
    context: dict[str, str]
    plaintext: bytes = field(repr=False)


@dataclass
class Template:
    directory: Path
    keys: dict[str, uuid.UUID]
    token: str
    wrapped: bytes = field(repr=False)
    sealed: list[Sealed]
    before: Snapshot
    #: Wrapped material (as stored) of the key the destroy case shreds.
    doomed_wrapped: list[bytes] = field(repr=False)
    #: The store's elapsed-time counter as persisted (a child resumes from it).
    elapsed_us: int = 0
    #: The fingerprint the store keeps for IMPORTED_MATERIAL in the external key.
    fingerprint: bytes = field(default=b"", repr=False)

    @property
    def db(self) -> Path:
        return self.directory / "kms.db"

    @property
    def root_key(self) -> Path:
        return self.directory / "root.key"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """One prepared store, copied for every case: two KMS keys, one EXTERNAL awaiting import."""
    directory = tmp_path_factory.mktemp("crash-template")
    root_key = load_root_key_file(directory / "root.key")
    store = SqliteKeyStore(directory / "kms.db", root_key)
    clock = ManualClock(T0 - timedelta(days=30))
    service = KeyService(store, clock=clock)
    rotating = service.create_key("team-a", "rotating", aliases=["alias/rotating"])
    clock.advance(timedelta(days=10))
    rotate(service, rotating.key_id)
    doomed = service.create_key("team-a", "doomed", aliases=["alias/doomed", "alias/old"])
    bystander = service.create_key("team-b", "bystander", aliases=["alias/rotating"])
    external = service.create_key("team-b", "external", origin=Origin.EXTERNAL)
    clock.advance(T0 - timedelta(hours=1) - clock.now())
    params = service.create_import_parameters(
        external.key_id,
        wrapping.WrappingAlgorithm.RSA_AES_KEY_WRAP_SHA_256,
        wrapping.WrappingKeySpec.RSA_2048,
    )
    wrapped = wrapping.wrap_material(
        wrapping.WrappingAlgorithm.RSA_AES_KEY_WRAP_SHA_256,
        params.public_key_pem.encode(),
        IMPORTED_MATERIAL,
    )
    sealed = []
    for namespace, name in (("team-a", "rotating"), ("team-a", "doomed"), ("team-b", "bystander")):
        for i, context in enumerate(({}, {"app": "crash", "ünï": "cödé"})):
            plaintext = f"{namespace}/{name} secret {i}".encode()
            result = service.encrypt(namespace, name, plaintext, context)
            sealed.append(Sealed(result.key_id, result.ciphertext_blob, context, plaintext))
    before = Snapshot.of(store)
    elapsed_us = store.load_elapsed()
    fingerprint = store.fingerprint(external.key_id, IMPORTED_MATERIAL)
    store.close()
    conn = sqlite3.connect(directory / "kms.db")
    doomed_wrapped = [
        bytes(row[0])
        for row in conn.execute(
            "SELECT wrapped FROM material WHERE key_id = ?", (str(doomed.key_id),)
        )
    ]
    conn.close()
    assert doomed_wrapped
    assert not Path(f"{directory / 'kms.db'}-wal").exists()
    return Template(
        directory,
        {
            "rotating": rotating.key_id,
            "doomed": doomed.key_id,
            "bystander": bystander.key_id,
            "external": external.key_id,
        },
        params.token,
        wrapped,
        sealed,
        before,
        doomed_wrapped,
        elapsed_us,
        fingerprint,
    )


@pytest.fixture
def workdir(template: Template, tmp_path: Path) -> Path:
    shutil.copy2(template.db, tmp_path / "kms.db")
    shutil.copy2(template.root_key, tmp_path / "root.key")
    return tmp_path


@pytest.fixture
def reopen(workdir: Path) -> Iterator[Callable[[], SqliteKeyStore]]:
    opened: list[SqliteKeyStore] = []

    def open_store() -> SqliteKeyStore:
        store = SqliteKeyStore(
            workdir / "kms.db", load_root_key_file(workdir / "root.key", create=False)
        )
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


def _run_child(workdir: Path, template: Template, op: str, point: str) -> None:
    key = {
        "create": None,
        "rotate": "rotating",
        "apply": "rotating",
        "import": "external",
        "destroy": "doomed",
    }[op]
    args = {
        "db": str(workdir / "kms.db"),
        "root_key": str(workdir / "root.key"),
        "now": T0.isoformat(),
        "op": op,
        "point": point,
        "key_id": str(template.keys[key]) if key else None,
        "namespace": NEW_KEY[0],
        "name": NEW_KEY[1],
        "token": template.token,
        "wrapped": template.wrapped.hex(),
        "window": PENDING_WINDOW_DAYS,
        "spec": {
            "description": APPLIED.description,
            "enabled": APPLIED.enabled,
            "aliases": list(APPLIED.aliases),
            "rotation_period_days": APPLIED.rotation_period_days,
        },
    }
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr)


# -- what a consistent store looks like ------------------------------------------------------


def _check_integrity(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()


def _check_invariants(db: Path, snapshot: Snapshot) -> None:
    """No state "between": rows of one key agree with each other, whatever the operation."""
    conn = sqlite3.connect(db)
    try:
        keys = dict(conn.execute("SELECT key_id, state FROM keys").fetchall())
        versions: dict[str, list[tuple[int, str, bytes | None]]] = {}
        for key_id, number, state, fingerprint in conn.execute(
            "SELECT key_id, version, state, fingerprint FROM versions ORDER BY key_id, version"
        ):
            versions.setdefault(key_id, []).append((number, state, fingerprint))
        material = set(conn.execute("SELECT key_id, version FROM material").fetchall())
        aliases = {k for (k,) in conn.execute("SELECT key_id FROM aliases")}
        params = {k for (k,) in conn.execute("SELECT key_id FROM import_parameters")}
    finally:
        conn.close()
    assert set(versions) == set(keys), "a key row without versions, or versions without a key"
    assert {k for k, _ in material} <= set(keys), "material without a key"
    for key_id, rows in versions.items():
        record = snapshot.records[uuid.UUID(key_id)]
        assert [n for n, _, _ in rows] == list(range(1, len(rows) + 1))
        assert keys[key_id] == record.state.value, "the stored state contradicts the facts"
        for number, state, fingerprint in rows:
            has_material = (key_id, number) in material
            if state == VersionState.ENABLED.value:
                assert has_material, f"version {number} of {key_id} is Enabled without material"
            else:
                assert not has_material, f"version {number} of {key_id} is {state} with material"
            if record.origin is Origin.KMS:
                assert fingerprint is None
        if record.state is KeyState.DESTROYED:
            assert all(s == VersionState.DESTROYED.value for _, s, _ in rows)
            assert all(f is None for _, _, f in rows)
            assert key_id not in aliases
            assert key_id not in params
    for (key_id, number), value in snapshot.materials.items():
        assert len(value) == 32, (key_id, number)


# -- what "after" means, operation by operation ----------------------------------------------


def _scheduled(template: Template) -> Snapshot:
    """The state after schedule_deletion committed, before the destruction."""
    doomed = template.keys["doomed"]
    records = dict(template.before.records)
    records[doomed] = records[doomed].evolve(
        deletion_requested_at=T0,
        deletion_date=T0 + timedelta(days=PENDING_WINDOW_DAYS),
        deletion_requested_elapsed=template.elapsed_us,
    )
    return Snapshot(records, template.before.materials)


def _assert_created(template: Template, now: Snapshot) -> None:
    new = [r for k, r in now.records.items() if k not in template.before.records]
    assert len(new) == 1
    record = new[0]
    assert (record.namespace, record.name) == NEW_KEY
    assert record.state is KeyState.ENABLED
    assert record.aliases == ("alias/crash",)
    assert record.versions == (VersionRecord(1, T0, VersionState.ENABLED),)
    assert (record.key_id, 1) in now.materials
    assert now.without(record.key_id) == template.before


def _assert_rotated(template: Template, now: Snapshot) -> None:
    key_id = template.keys["rotating"]
    old = template.before.records[key_id]
    record = now.records[key_id]
    number = old.current_version + 1
    assert record == old.evolve(
        versions=(*old.versions, VersionRecord(number, T0, VersionState.ENABLED)),
        last_rotated_at=T0,
    )
    assert (key_id, number) in now.materials
    for version in old.versions:
        assert (
            now.materials[(key_id, version.version)]
            == (template.before.materials[(key_id, version.version)])
        )
    assert now.without(key_id) == template.before.without(key_id)


def _assert_applied(template: Template, now: Snapshot) -> None:
    key_id = template.keys["rotating"]
    old = template.before.records[key_id]
    record = now.records[key_id]
    number = old.current_version + 1
    assert record == old.evolve(
        description=APPLIED.description,
        aliases=APPLIED.aliases,
        rotation_period_days=APPLIED.rotation_period_days,
        next_rotation_at=T0 + timedelta(days=90),
        versions=(*old.versions, VersionRecord(number, T0, VersionState.ENABLED)),
        last_rotated_at=T0,
    )
    assert (key_id, number) in now.materials
    assert now.without(key_id) == template.before.without(key_id)


def _assert_imported(template: Template, now: Snapshot) -> None:
    key_id = template.keys["external"]
    old = template.before.records[key_id]
    assert now.records[key_id] == old.evolve(
        versions=(
            VersionRecord(
                1,
                old.versions[0].created_at,
                VersionState.ENABLED,
                fingerprint=template.fingerprint,
                imported_at=T0,
            ),
        )
    )
    assert now.materials[(key_id, 1)] == IMPORTED_MATERIAL
    assert now.without(key_id) == template.before.without(key_id)


def _assert_destroyed(template: Template, now: Snapshot) -> None:
    key_id = template.keys["doomed"]
    old = template.before.records[key_id]
    record = now.records[key_id]
    assert record == old.evolve(
        deletion_requested_at=T0,
        deletion_date=T0 + timedelta(days=PENDING_WINDOW_DAYS),
        deletion_requested_elapsed=template.elapsed_us,
        destroyed_at=T0 + timedelta(days=PENDING_WINDOW_DAYS + 1),
        enabled=False,
        aliases=(),
        versions=tuple(
            VersionRecord(v.version, v.created_at, VersionState.DESTROYED) for v in old.versions
        ),
    )
    assert not [k for k in now.materials if k[0] == key_id]
    assert now.without(key_id) == template.before.without(key_id)


AFTER: dict[str, Callable[[Template, Snapshot], None]] = {
    "create": _assert_created,
    "rotate": _assert_rotated,
    "apply": _assert_applied,
    "import": _assert_imported,
    "destroy": _assert_destroyed,
}


def _expected_before(template: Template, op: str, point: str) -> Snapshot:
    """A kill inside a transaction leaves the state before it: for destroy, that is the state
    after schedule_deletion when the kill comes in the destroying transaction."""
    if op == "destroy" and point.startswith("destroy:"):
        return _scheduled(template)
    return template.before


def _finish(service: KeyService, clock: ManualClock, template: Template, op: str) -> None:
    """What the operator does on restart: run the verb again; it must complete the work."""
    if op == "create":
        service.create_key(*NEW_KEY, aliases=["alias/crash"])
    elif op == "rotate":
        record = service.get(template.keys["rotating"])
        if record.current_version == template.before.records[record.key_id].current_version:
            rotate(service, record.key_id)
    elif op == "apply":
        record = service.get(template.keys["rotating"])
        if record.description != APPLIED.description:
            service.apply_spec(record.key_id, APPLIED, rotate=True)
    elif op == "import":
        service.import_material(template.keys["external"], template.token, template.wrapped)
    else:
        key_id = template.keys["doomed"]
        service.schedule_deletion(key_id, PENDING_WINDOW_DAYS)
        clock.advance(T0 + timedelta(days=PENDING_WINDOW_DAYS + 1) - clock.now())
        service.run_due(clock.now())


def _assert_no_copy_of(needles: list[bytes], db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{db}{suffix}")
        if path.exists():
            content = path.read_bytes()
            leaks = sum(needle in content for needle in needles)
            assert not leaks, f"{leaks} copies of destroyed material left in {path.name}"


def _check_service(store: SqliteKeyStore, clock: ManualClock, template: Template) -> KeyService:
    """A fresh service works: blobs made before the crash decrypt (refused, naming the state,
    for a key pending deletion or destroyed), and every Enabled key round-trips."""
    service = KeyService(store, clock=clock)
    service.warm_cache()
    for sealed in template.sealed:
        if service.get(sealed.key_id).state is not KeyState.ENABLED:
            with pytest.raises(KeyStateError):
                service.decrypt(sealed.blob, sealed.context)
        else:
            assert service.decrypt(sealed.blob, sealed.context).plaintext == sealed.plaintext
    for record in service.keys():
        if record.state is KeyState.ENABLED:
            made = service.encrypt(record.namespace, record.name, b"after the crash", {"k": "v"})
            assert service.decrypt(made.ciphertext_blob, {"k": "v"}).plaintext == (
                b"after the crash"
            )
    return service


# -- the tests -------------------------------------------------------------------------------


def test_cases_cover_every_fault_point_of_the_store() -> None:
    source = Path(sqlite_store.__file__).read_text(encoding="utf-8")
    in_source = set(re.findall(r'_fault\("([^"]+)"\)', source))
    assert in_source == {
        "create:key-row",
        "create:versions",
        "create:material",
        "update:key-row",
        "update:versions",
        "update:material",
        "destroy:material",
        "destroy:key-row",
    }
    assert in_source <= {point for _, point in CASES}


@pytest.mark.parametrize(("op", "point"), CASES, ids=[f"{o}@{p}" for o, p in CASES])
def test_sigkill_leaves_the_state_before_or_after(
    template: Template,
    workdir: Path,
    reopen: Callable[[], SqliteKeyStore],
    op: str,
    point: str,
) -> None:
    _run_child(workdir, template, op, point)
    db = workdir / "kms.db"

    store = reopen()
    now = Snapshot.of(store)
    _check_integrity(db)
    _check_invariants(db, now)
    if point in ("after", "checkpoint"):
        AFTER[op](template, now)
    else:
        assert now == _expected_before(template, op, point), "a state between before and after"

    clock = ManualClock(T0)
    destroyed = {k for k, r in now.records.items() if r.state is KeyState.DESTROYED}
    if destroyed:
        # Shredding finished on restart: no copy of the material is left anywhere.
        _assert_no_copy_of(template.doomed_wrapped, db)
    service = _check_service(store, clock, template)

    _finish(service, clock, template, op)
    store.close()
    store = reopen()
    finished = Snapshot.of(store)
    _check_integrity(db)
    _check_invariants(db, finished)
    AFTER[op](template, finished)
    if op == "destroy":
        _assert_no_copy_of(template.doomed_wrapped, db)
    _check_service(store, ManualClock(T0), template)

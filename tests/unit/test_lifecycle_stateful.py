"""A hypothesis state machine over KeyService and a small model of DESIGN.md section 2.

The model is a dict of keys with their origin, enabled flag, versions (material present or
not, and which material an EXTERNAL version holds), deletion date and the blobs made under
them. Random sequences of lifecycle verbs, imports, time passing, wall-clock steps (forward
and backward, by up to years), monotonic advances alone, restarts and timers run against the
real service on a real SQLite store; after every step:

- the service's state, version states and deletion date equal the model's;
- no Disabled, PendingImport, PendingDeletion or Destroyed key encrypts or decrypts, and each
  refuses with the error that names its state;
- Enabled keys decrypt every blob of a version that has material;
- no key is destroyed before its deletion date, whatever the clock did;
- no key is destroyed before its window has elapsed on the monotonic clock (the time that
  really passed since the request), however far the wall clock was stepped, and across
  restarts (which may lose the time not yet persisted: a delay, never an advance).

A ``reopen`` rule swaps in a fresh KeyService over the same store file and checks it sees the
same records; the model's elapsed-time counter then resumes from the value the store kept.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from tests.support.changes import rotate, set_enabled
from tests.support.clocks import ManualClock
from tests.support.importing import Importer

from kms_operator.crypto import wrapping
from kms_operator.crypto.wrapping import WrappingAlgorithm, WrappingKeySpec
from kms_operator.errors import (
    IncorrectKeyMaterial,
    InvalidCiphertext,
    InvalidRequest,
    KeyDisabled,
    KeyPendingDeletion,
    KeyPendingImport,
    KeyStateError,
)
from kms_operator.keys.clock import Timescale, microseconds
from kms_operator.keys.service import KeyService, Timer
from kms_operator.store.records import KeyRecord, KeyState, Origin, VersionState
from kms_operator.store.rootkey import load_root_key_file
from kms_operator.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.unit

NS = "ns"
NAMES = ("a", "b", "c")
MATERIALS = tuple(bytes([i]) * 32 for i in (1, 2, 3))
CONTEXTS = (None, {"app": "orders"})
TIMESCALE = Timescale(86400)
DAY = timedelta(days=1)
REFUSAL = {
    KeyState.DISABLED: KeyDisabled,
    KeyState.PENDING_IMPORT: KeyPendingImport,
    KeyState.PENDING_DELETION: KeyPendingDeletion,
    KeyState.DESTROYED: KeyStateError,
}
MAX_BLOBS = 5

clock_jumps = st.one_of(
    st.integers(0, 2 * 86400).map(lambda s: timedelta(seconds=s)),
    st.integers(1, 40).map(lambda d: d * DAY),
    st.sampled_from([400 * DAY, 3000 * DAY]),
    st.integers(1, 3 * 86400).map(lambda s: -timedelta(seconds=s)),
)
#: Steps of the wall clock alone: NTP corrections, a wrong host clock, a restored snapshot.
wall_steps = st.one_of(
    st.integers(-3 * 86400, 2 * 86400).map(lambda s: timedelta(seconds=s)),
    st.integers(-40, 40).map(lambda d: d * DAY),
    st.sampled_from([400 * DAY, 3000 * DAY, -400 * DAY]),
)
monotonic_advances = st.one_of(
    st.integers(0, 2 * 86400).map(lambda s: timedelta(seconds=s)),
    st.integers(1, 40).map(lambda d: d * DAY),
)


@dataclass
class ModelVersion:
    present: bool
    material: bytes | None = None  # EXTERNAL: which material it holds (or held)
    destroyed: bool = False

    @property
    def state(self) -> VersionState:
        if self.destroyed:
            return VersionState.DESTROYED
        return VersionState.ENABLED if self.present else VersionState.PENDING_IMPORT


@dataclass
class Blob:
    blob: bytes
    version: int
    plaintext: bytes
    context: dict[str, str] | None


@dataclass
class ModelKey:
    key_id: uuid.UUID
    name: str
    origin: Origin
    versions: list[ModelVersion]
    enabled: bool = True
    deletion_date: datetime | None = None
    #: The service's elapsed counter at the request, the window, and the true monotonic time
    #: at the request (the machine's own count, never reset by a restart).
    requested_elapsed: int | None = None
    window_us: int = 0
    requested_true: int = 0
    destroyed: bool = False
    blobs: list[Blob] = field(default_factory=list)

    @property
    def state(self) -> KeyState:
        if self.destroyed:
            return KeyState.DESTROYED
        if self.deletion_date is not None:
            return KeyState.PENDING_DELETION
        if not self.versions[-1].present:
            return KeyState.PENDING_IMPORT
        return KeyState.ENABLED if self.enabled else KeyState.DISABLED


def _by_id(record: KeyRecord) -> str:
    return str(record.key_id)


def expect_refusal(state: KeyState, call: Callable[[], object]) -> None:
    """``call`` must fail with the error of ``state``, whose message names the state."""
    with pytest.raises(KeyStateError) as caught:
        call()
    assert type(caught.value) is REFUSAL[state], (state, caught.value)
    assert str(state) in caught.value.message


class LifecycleMachine(RuleBasedStateMachine):
    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self._tmp = tempfile.TemporaryDirectory(prefix="kms-stateful-")
        base = Path(self._tmp.name)
        self.root_key = load_root_key_file(base / "root.key")
        self.path = base / "kms.db"
        self.clock = ManualClock()
        self.stores = [SqliteKeyStore(self.path, self.root_key)]
        self.service = KeyService(self.stores[0], clock=self.clock, timescale=TIMESCALE)
        self.model: dict[uuid.UUID, ModelKey] = {}
        self.counter = 0
        #: The service's elapsed-time counter as the model predicts it (microseconds), and the
        #: monotonic time that really passed since the machine started.
        self.elapsed_us = self.service.elapsed.now_us()
        self.true_us = 0

    def teardown(self) -> None:
        for store in self.stores:
            store.close()
        self._tmp.cleanup()

    # -- rules ---------------------------------------------------------------------------

    @rule(target=keys, name=st.sampled_from(NAMES), origin=st.sampled_from(Origin))
    def create(self, name: str, origin: Origin) -> uuid.UUID:
        live = next((m for m in self.model.values() if m.name == name and not m.destroyed), None)
        record = self.service.create_key(NS, name, origin=origin)
        if live is not None:
            assert record.key_id == live.key_id  # idempotent per namespace/name
            return live.key_id
        assert record.key_id not in self.model
        self.model[record.key_id] = ModelKey(
            record.key_id, name, origin, [ModelVersion(present=origin is Origin.KMS)]
        )
        return record.key_id

    @rule(key=keys, enabled=st.booleans())
    def set_enabled(self, key: uuid.UUID, enabled: bool) -> None:
        m = self.model[key]
        if m.state in (KeyState.PENDING_DELETION, KeyState.DESTROYED):
            expect_refusal(m.state, lambda: set_enabled(self.service, key, enabled))
            return
        assert set_enabled(self.service, key, enabled).enabled is enabled
        m.enabled = enabled

    @rule(key=keys)
    def rotate(self, key: uuid.UUID) -> None:
        m = self.model[key]
        if m.origin is Origin.EXTERNAL:
            with pytest.raises(InvalidRequest):
                rotate(self.service, key)
        elif m.state is not KeyState.ENABLED:
            expect_refusal(m.state, lambda: rotate(self.service, key))
        else:
            record = rotate(self.service, key)
            m.versions.append(ModelVersion(present=True))
            assert record.current_version == len(m.versions)

    @rule(key=keys, window=st.one_of(st.integers(7, 30), st.sampled_from([0, 6, 31])))
    def schedule_deletion(self, key: uuid.UUID, window: int) -> None:
        m = self.model[key]
        if m.state in (KeyState.PENDING_DELETION, KeyState.DESTROYED):
            # Asked again: the date is the one fixed by the first request.
            assert self.service.schedule_deletion(key, window).deletion_date == m.deletion_date
        elif not 7 <= window <= 30:
            with pytest.raises(InvalidRequest):
                self.service.schedule_deletion(key, window)
        else:
            record = self.service.schedule_deletion(key, window)
            m.deletion_date = self.clock.now() + TIMESCALE.days(window)
            m.requested_elapsed = self.elapsed_us
            m.window_us = microseconds(TIMESCALE.days(window))
            m.requested_true = self.true_us
            assert record.deletion_date == m.deletion_date
            assert record.deletion_requested_elapsed == self.elapsed_us

    @rule(key=keys)
    def cancel_deletion(self, key: uuid.UUID) -> None:
        m = self.model[key]
        if m.state is not KeyState.PENDING_DELETION:
            with pytest.raises(KeyStateError) as caught:
                self.service.cancel_deletion(key)
            assert type(caught.value) is KeyStateError
            assert str(m.state) in caught.value.message
            return
        record = self.service.cancel_deletion(key)
        m.deletion_date = None
        m.requested_elapsed = None
        m.enabled = False
        assert record.key_id == key
        assert record.state is m.state

    def _pass(self, delta: timedelta) -> None:
        """Time passes on the monotonic clock (the model counts it twice: see __init__)."""
        self.elapsed_us += microseconds(delta)
        self.true_us += microseconds(delta)

    @rule(jump=clock_jumps)
    def advance_clock(self, jump: timedelta) -> None:
        """Time passes (both clocks); a negative jump is a backward step of the wall clock."""
        self.clock.advance(jump)
        if jump > timedelta(0):
            self._pass(jump)

    @rule(step=wall_steps)
    def step_wall_clock(self, step: timedelta) -> None:
        self.clock.step(step)

    @rule(delta=monotonic_advances)
    def advance_monotonic_only(self, delta: timedelta) -> None:
        self.clock.advance_monotonic(delta)
        self._pass(delta)

    @rule(key=keys, offset=st.integers(-2, 2))
    def jump_near_deadline(self, key: uuid.UUID, offset: int) -> None:
        """Let time pass up to a key's next deadline, give or take a microsecond or two (or
        step the wall clock there, when the deadline is behind it)."""
        deadline = self.service.next_deadline(key)
        if deadline is None:
            return
        delta = deadline + timedelta(microseconds=offset) - self.clock.now()
        if delta > timedelta(0):
            self.advance_clock(delta)
        else:
            self.clock.step(delta)

    def _due(self, m: ModelKey, now: datetime) -> bool:
        if m.deletion_date is None or m.destroyed or now < m.deletion_date:
            return False
        assert m.requested_elapsed is not None
        return self.elapsed_us - m.requested_elapsed >= m.window_us

    @rule()
    def run_deletion_timers(self) -> None:
        now = self.clock.now()
        fired = {record.key_id: (record, timer) for record, timer in self.service.run_due(now)}
        for key, m in self.model.items():
            due = self._due(m, now)
            destroyed, timer = fired.pop(key, (None, None))
            assert timer in (None, Timer.DESTRUCTION)  # the model sets no other timer
            if m.deletion_date is not None and not m.destroyed and now >= m.deletion_date:
                event("wall clock due: destroyed" if due else "wall clock due: elapsed not yet")
            if not due:
                assert destroyed is None, f"{key} destroyed before {m.deletion_date} at {now}"
                continue
            assert destroyed is not None
            # The window really passed: on the monotonic clock, not only on the wall clock.
            assert self.true_us - m.requested_true >= m.window_us
            assert destroyed.state is KeyState.DESTROYED
            m.destroyed = True
            for version in m.versions:
                version.destroyed = True
                version.present = False
        assert not fired, fired

    @rule(
        key=keys,
        material=st.sampled_from(MATERIALS),
        algorithm=st.sampled_from(WrappingAlgorithm),
    )
    def import_material(
        self, key: uuid.UUID, material: bytes, algorithm: WrappingAlgorithm
    ) -> None:
        m = self.model[key]
        importer = Importer(self.service)
        if m.state in (KeyState.PENDING_DELETION, KeyState.DESTROYED):
            expect_refusal(m.state, lambda: importer.parameters(key, algorithm))
            return
        if m.origin is Origin.KMS:
            with pytest.raises(InvalidRequest):
                importer.parameters(key, algorithm)
            return
        match = next((i for i, v in enumerate(m.versions) if v.material == material), None)
        current = m.versions[-1]
        if match is None and current.material is not None and not current.present:
            with pytest.raises(IncorrectKeyMaterial):
                importer.import_material(key, material, algorithm=algorithm)
            return
        if match is None and current.material is None:
            match = len(m.versions) - 1
        elif match is None:
            m.versions.append(ModelVersion(present=False))
            match = len(m.versions) - 1
        record, number = importer.import_material(key, material, algorithm=algorithm)
        m.versions[match].material = material
        m.versions[match].present = True
        assert number == match + 1
        assert record.state is m.state

    @rule(key=keys, which=st.one_of(st.none(), st.integers(1, 3)))
    def delete_material(self, key: uuid.UUID, which: int | None) -> None:
        m = self.model[key]
        if m.origin is Origin.KMS:
            with pytest.raises(InvalidRequest):
                self.service.delete_imported_material(key)
            return
        self.service.delete_imported_material(key, None if which is None else [which])
        if m.destroyed:
            return
        for number, version in enumerate(m.versions, start=1):
            if which is None or which == number:
                version.present = False

    @rule(
        key=keys,
        plaintext=st.binary(max_size=64),
        context=st.sampled_from(CONTEXTS),
    )
    def encrypt(self, key: uuid.UUID, plaintext: bytes, context: dict[str, str] | None) -> None:
        m = self.model[key]
        if m.state is not KeyState.ENABLED:
            expect_refusal(m.state, lambda: self.service.encrypt(NS, str(key), plaintext, context))
            return
        result = self.service.encrypt(NS, str(key), plaintext, context)
        assert (result.key_id, result.key_version) == (key, len(m.versions))
        m.blobs = [*m.blobs, Blob(result.ciphertext_blob, result.key_version, plaintext, context)]
        m.blobs = m.blobs[-MAX_BLOBS:]

    @rule(key=keys, index=st.integers(0, MAX_BLOBS - 1), wrong_context=st.booleans())
    def decrypt(self, key: uuid.UUID, index: int, wrong_context: bool) -> None:
        m = self.model[key]
        if not m.blobs:
            return
        blob = m.blobs[index % len(m.blobs)]
        context = {"app": "other"} if wrong_context else blob.context
        if not wrong_context or m.state is not KeyState.ENABLED:
            self._check_decrypt(m, blob)
            return
        if m.versions[blob.version - 1].present:
            with pytest.raises(InvalidCiphertext):
                self.service.decrypt(blob.blob, context)

    @rule()
    def reopen(self) -> None:
        # A restart: the old service's background persist (if any) finishes first, as a dead
        # process writes nothing after its death.
        self.service.elapsed.settle()
        store = SqliteKeyStore(self.path, self.root_key)
        self.stores.append(store)
        fresh = KeyService(store, clock=self.clock, timescale=TIMESCALE)
        assert sorted(fresh.keys(), key=_by_id) == sorted(self.service.keys(), key=_by_id)
        for name in NAMES:
            assert fresh.find(NS, name) == self.service.find(NS, name)
        # The counter resumes from the value persisted: never ahead of the one before.
        resumed = fresh.elapsed.now_us()
        assert resumed <= self.elapsed_us
        for m in self.model.values():
            if m.requested_elapsed is not None and not m.destroyed:
                assert resumed >= m.requested_elapsed  # persisted with the request
        self.elapsed_us = resumed
        self.service = fresh

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def service_state_equals_model(self) -> None:
        assert len(self.service.keys()) == len(self.model)
        for key, m in self.model.items():
            record = self.service.get(key)
            assert record.state is m.state, (record, m)
            assert [v.state for v in record.versions] == [v.state for v in m.versions]
            assert record.deletion_date == m.deletion_date
            if not m.destroyed:
                assert record.deletion_requested_elapsed == m.requested_elapsed
            if record.destroyed_at is not None:
                assert record.deletion_date is not None
                assert record.destroyed_at >= record.deletion_date
        for name in NAMES:
            live = [k for k, m in self.model.items() if m.name == name and not m.destroyed]
            found = self.service.find(NS, name)
            assert ([found.key_id] if found else []) == live

    @invariant()
    def crypto_follows_state(self) -> None:
        for key, m in self.model.items():
            for blob in m.blobs:
                self._check_decrypt(m, blob)
            if m.state is not KeyState.ENABLED:
                expect_refusal(m.state, lambda k=key: self.service.encrypt(NS, str(k), b"x"))
                expect_refusal(m.state, lambda k=key: self.service.generate_data_key(NS, str(k)))

    def _check_decrypt(self, m: ModelKey, blob: Blob) -> None:
        if m.state is not KeyState.ENABLED:
            expect_refusal(m.state, lambda: self.service.decrypt(blob.blob, blob.context))
        elif not m.versions[blob.version - 1].present:
            with pytest.raises(KeyPendingImport):
                self.service.decrypt(blob.blob, blob.context)
        else:
            opened = self.service.decrypt(blob.blob, blob.context)
            assert opened.plaintext == blob.plaintext
            assert opened.key_version == blob.version


def test_lifecycle_state_machine(
    monkeypatch: pytest.MonkeyPatch,
    wrapping_key_pool: Callable[[WrappingKeySpec], tuple[bytes, bytes]],
) -> None:
    # RSA key generation is slow: import parameters draw from a small pool of wrapping keys.
    monkeypatch.setattr(wrapping, "generate_wrapping_key", wrapping_key_pool)
    run_state_machine_as_test(
        LifecycleMachine,
        settings=settings(
            max_examples=250,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )

"""Readers (encrypt, decrypt, on the event loop) against writers (lifecycle verbs, in threads).

The rules are :mod:`kms_operator.keys.index`'s: writers are serialized by a lock held across
the store's commit; readers take no lock and see, per key, one immutable entry whose hits
carry their own AEADs. So a reader never fails on what a writer is doing (only the KMS errors
of the key's state, before or after the write), and never waits for a writer.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.support.changes import rotate, set_description, set_enabled
from tests.support.importing import Importer

from kms_operator.errors import KmsError
from kms_operator.keys.service import KeyService
from kms_operator.store.records import Origin
from kms_operator.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.unit

NS = "team-a"
MATERIAL = bytes(range(32))
ROUNDS = 25
#: Bound on how long a call that must not block may take before the test calls it blocked.
BLOCKED_AFTER_SECONDS = 10.0


@pytest.fixture
def fine_grained_switching() -> Iterator[None]:
    """Switch threads as often as CPython allows, so races show within a few rounds."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_crypto_during_lifecycle_changes_raises_only_kms_errors(
    service: KeyService, importer: Importer, fine_grained_switching: None
) -> None:
    external = service.create_key(NS, "ext", origin=Origin.EXTERNAL)
    importer.import_material(external.key_id, MATERIAL)
    rotating = service.create_key(NS, "rotating")
    blobs = [
        service.encrypt(NS, "ext", b"external data").ciphertext_blob,
        service.encrypt(NS, "rotating", b"kms data").ciphertext_blob,
    ]
    stop = threading.Event()
    unexpected: list[BaseException] = []
    calls = [0]

    def reader() -> None:
        while not stop.is_set():
            for attempt in (
                lambda: service.encrypt(NS, "ext", b"x"),
                lambda: service.encrypt(NS, external.key_id, b"x"),
                lambda: service.encrypt(NS, "rotating", b"y"),
                lambda: service.generate_data_key(NS, "rotating"),
                lambda: service.decrypt(blobs[0]),
                lambda: service.decrypt(blobs[1]),
                lambda: service.re_encrypt(blobs[1], NS, "ext"),
            ):
                try:
                    attempt()
                except KmsError:
                    pass  # the key's state at that instant refused it: expected
                except BaseException as exc:  # a KeyError, an AttributeError: a race
                    unexpected.append(exc)
                    stop.set()
                    return
                calls[0] += 1

    readers = [threading.Thread(target=reader, daemon=True) for _ in range(2)]
    for thread in readers:
        thread.start()
    try:
        for _ in range(ROUNDS):
            if stop.is_set():
                break
            service.delete_imported_material(external.key_id)
            importer.import_material(external.key_id, MATERIAL)
            set_enabled(service, rotating.key_id, False)
            set_enabled(service, rotating.key_id, True)
            rotate(service, rotating.key_id)
    finally:
        stop.set()
        for thread in readers:
            thread.join(timeout=BLOCKED_AFTER_SECONDS)
    assert not unexpected, f"{len(unexpected)} unexpected errors, first: {unexpected[0]!r}"
    assert calls[0] > ROUNDS  # the readers really ran during the writes
    # And the end state is served right.
    assert service.decrypt(blobs[0]).plaintext == b"external data"
    assert service.decrypt(blobs[1]).plaintext == b"kms data"


@pytest.fixture
def writer_in_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[KeyService, SqliteKeyStore, uuid.UUID], None]]:
    """Start a writer (``set_description``) and hold it inside the store's commit."""
    release = threading.Event()
    writers: list[threading.Thread] = []

    def start(service: KeyService, store: SqliteKeyStore, key_id: uuid.UUID) -> None:
        entered = threading.Event()
        real_update = store.update

        def held_update(*args: Any, **kwargs: Any) -> None:
            entered.set()
            release.wait(timeout=60)
            real_update(*args, **kwargs)

        monkeypatch.setattr(store, "update", held_update)
        writer = threading.Thread(target=set_description, args=(service, key_id, "changed"))
        writer.start()
        writers.append(writer)
        assert entered.wait(timeout=BLOCKED_AFTER_SECONDS)

    yield start
    release.set()
    for writer in writers:
        writer.join(timeout=BLOCKED_AFTER_SECONDS)


def _completes(calls: Callable[[], object]) -> bool:
    """Run ``calls`` in a thread; False if it is still blocked after the bound."""
    done = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            calls()
        except BaseException as exc:
            failed.append(exc)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    finished = done.wait(timeout=BLOCKED_AFTER_SECONDS)
    assert not failed, failed
    return finished


def test_crypto_never_waits_for_a_writer_holding_the_lock(
    service: KeyService,
    store: SqliteKeyStore,
    writer_in_commit: Callable[[KeyService, SqliteKeyStore, uuid.UUID], None],
) -> None:
    busy = service.create_key(NS, "busy", aliases=["alias/busy"])
    other = service.create_key(NS, "other")
    old_blob = service.encrypt(NS, "busy", b"before").ciphertext_blob
    writer_in_commit(service, store, busy.key_id)

    def crypto() -> None:
        # First calls on "other": the fast paths are not used yet for it.
        sealed = service.encrypt(NS, "other", b"during")
        assert service.decrypt(sealed.ciphertext_blob).plaintext == b"during"
        service.generate_data_key(NS, other.key_id)
        # The key being written: its state before the write serves.
        assert service.decrypt(old_blob).plaintext == b"before"
        assert service.encrypt(NS, "alias/busy", b"x").key_id == busy.key_id
        service.re_encrypt(old_blob, NS, "other")
        assert service.resolve(NS, "busy").description == ""
        assert service.key_of_blob(old_blob).key_id == busy.key_id
        service.next_deadline(busy.key_id)
        service.keys()

    assert _completes(crypto), "encrypt/decrypt waited for a writer"


def test_a_cold_key_is_loaded_without_waiting_and_kept_when_no_writer_runs(
    service: KeyService,
    reopen: Callable[[], KeyService],
    writer_in_commit: Callable[[KeyService, SqliteKeyStore, uuid.UUID], None],
) -> None:
    key = service.create_key(NS, "cold")
    other = service.create_key(NS, "other")
    blob = service.encrypt(NS, "cold", b"data").ciphertext_blob
    restarted = reopen()  # not warmed: no AEAD in memory yet
    cold_entry = restarted._index.entry(key.key_id)
    assert cold_entry is not None and not cold_entry.aeads
    writer_in_commit(restarted, restarted._store, other.key_id)  # type: ignore[arg-type]

    assert _completes(lambda: restarted.decrypt(blob))
    # It was used, not kept: keeping it needs the writer lock, and a reader never waits.
    assert restarted._index.entry(key.key_id) is cold_entry


def test_a_cold_key_is_kept_once_loaded(
    service: KeyService, reopen: Callable[[], KeyService]
) -> None:
    key = service.create_key(NS, "cold")
    blob = service.encrypt(NS, "cold", b"data").ciphertext_blob
    restarted = reopen()
    assert restarted.decrypt(blob).plaintext == b"data"
    entry = restarted._index.entry(key.key_id)
    assert entry is not None and set(entry.aeads) == {1}
    assert entry.encrypt_hit is not None
    assert restarted._index.decrypt_hit(blob[:24]) is not None

"""``KeyService.refresh``: a service catches up with writes another process made to its store.

Two services on one store file, each through its own ``SqliteKeyStore`` (its own SQLite
connection), stand for ``kms-plugin serve`` (the reader) and a ``kms-plugin keys`` command (the
writer). The store's ``data_version`` moves with the other connection's commits only.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from tests.support.changes import rotate, set_enabled
from tests.support.importing import Importer

from kms_operator.errors import KeyDisabled
from kms_operator.keys.service import KeyService
from kms_operator.store.records import KeyState, Origin
from kms_operator.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.unit

NS = "kms-plugin"
MATERIAL = bytes(range(32))
OTHER_MATERIAL = bytes(range(64, 96))


@pytest.fixture
def reader(reopen: Callable[[], KeyService]) -> KeyService:
    """The serving process's service, opened before the writer's changes."""
    return reopen()


def test_data_version_moves_with_the_other_connections_commits_only(
    store: SqliteKeyStore, reopen: Callable[[], KeyService], service: KeyService
) -> None:
    other = reopen()
    before = store.data_version()

    service.create_key(NS, "mine")
    assert store.data_version() == before

    other.create_key(NS, "theirs")
    assert store.data_version() != before


def test_refresh_without_foreign_writes_changes_nothing(
    service: KeyService, reader: KeyService
) -> None:
    reader.create_key(NS, "own-write")

    assert reader.refresh() is False
    assert reader.find(NS, "own-write") is not None


def test_refresh_sees_a_key_created_elsewhere_and_uses_it(
    service: KeyService, reader: KeyService
) -> None:
    key_id = service.create_key(NS, "apiserver").key_id
    assert reader.find(NS, "apiserver") is None

    assert reader.refresh() is True
    assert reader.refresh() is False

    sealed = reader.encrypt(NS, "apiserver", b"seen")
    assert sealed.key_id == key_id
    assert service.decrypt(sealed.ciphertext_blob).plaintext == b"seen"
    assert reader._index.sizes()["encrypt_hits"] == 1  # the fast path holds the new key


def test_refresh_sees_a_rotation_and_older_versions_keep_decrypting(
    service: KeyService, reader: KeyService
) -> None:
    key_id = service.create_key(NS, "apiserver").key_id
    reader.refresh()
    old = reader.encrypt(NS, "apiserver", b"version one")

    rotate(service, key_id)
    assert reader.encrypt(NS, "apiserver", b"stale").key_version == 1  # not refreshed yet
    assert reader.refresh() is True

    new = reader.encrypt(NS, "apiserver", b"version two")
    assert (new.key_version, reader.get(key_id).current_version) == (2, 2)
    assert reader.decrypt(old.ciphertext_blob).plaintext == b"version one"
    assert service.decrypt(new.ciphertext_blob).plaintext == b"version two"


def test_refresh_sees_a_disable_and_an_enable(service: KeyService, reader: KeyService) -> None:
    key_id = service.create_key(NS, "apiserver").key_id
    reader.refresh()
    blob = reader.encrypt(NS, "apiserver", b"kept").ciphertext_blob

    set_enabled(service, key_id, False)
    reader.refresh()
    assert reader.get(key_id).state is KeyState.DISABLED
    with pytest.raises(KeyDisabled):
        reader.encrypt(NS, "apiserver", b"refused")
    with pytest.raises(KeyDisabled):
        reader.decrypt(blob)

    set_enabled(service, key_id, True)
    reader.refresh()
    assert reader.decrypt(blob).plaintext == b"kept"


def test_refresh_sees_imported_material_and_a_new_version_by_import(
    service: KeyService, reader: KeyService
) -> None:
    key_id = service.create_key(NS, "shared", origin=Origin.EXTERNAL).key_id
    reader.refresh()
    assert reader.get(key_id).state is KeyState.PENDING_IMPORT

    importer = Importer(service)
    importer.import_material(key_id, MATERIAL)
    reader.refresh()
    first = reader.encrypt(NS, "shared", b"one")

    importer.import_material(key_id, OTHER_MATERIAL)
    reader.refresh()
    second = reader.encrypt(NS, "shared", b"two")

    assert (first.key_version, second.key_version) == (1, 2)
    assert service.decrypt(first.ciphertext_blob).plaintext == b"one"
    assert service.decrypt(second.ciphertext_blob).plaintext == b"two"


def test_refresh_keeps_the_index_consistent(service: KeyService, reader: KeyService) -> None:
    """The index after refreshes holds what a fresh open of the store would hold."""
    ids: list[uuid.UUID] = [service.create_key(NS, f"key-{n}").key_id for n in range(3)]
    reader.refresh()
    rotate(service, ids[0])
    set_enabled(service, ids[1], False)
    reader.refresh()

    assert sorted(reader.keys(), key=lambda r: r.key_id) == sorted(
        service.keys(), key=lambda r: r.key_id
    )
    assert reader._index.sizes() == service._index.sizes()

"""Keys are bound to their namespace and object by UID, and named by one spelling of their id.

Security review (issue 8), items 1, 2 and 9: a namespace re-created with the same name never
inherits the old tenant's keys; key ids are the canonical text only, and the fast paths are
keyed by key id, so spellings of one id cannot grow the process; a resolved key is used as is.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.support.changes import set_aliases
from tests.support.schemas import downgrade

from kms_operator.errors import InvalidCiphertext, KeyBoundElsewhere, NotFound
from kms_operator.keys.service import KeyService
from kms_operator.store import sqlite as sqlite_store
from kms_operator.store.rootkey import RootKey
from kms_operator.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.unit

NS = "team-a"
NS_UID, NEW_NS_UID = "ns-uid-1", "ns-uid-2"
OBJ_UID, NEW_OBJ_UID = "obj-uid-1", "obj-uid-2"


def _bound(service: KeyService, name: str = "k", **extra: object) -> uuid.UUID:
    record = service.create_key(
        NS,
        name,
        namespace_uid=NS_UID,
        object_uid=OBJ_UID,
        **extra,  # type: ignore[arg-type]
    )
    return record.key_id


# -- item 1: namespace and object UIDs ------------------------------------------------------


def test_same_object_keeps_its_key(service: KeyService) -> None:
    key_id = _bound(service)
    found = service.bind(NS, "k", namespace_uid=NS_UID, object_uid=OBJ_UID)
    assert found is not None and found.key_id == key_id


def test_recreated_namespace_gets_no_old_key(
    service: KeyService, reopen: Callable[[], KeyService]
) -> None:
    key_id = _bound(service, aliases=("alias/payments",))
    blob = service.encrypt(NS, "k", b"old tenant's secret").ciphertext_blob

    assert service.bind(NS, "k", namespace_uid=NEW_NS_UID, object_uid=NEW_OBJ_UID) is None
    old = service.get(key_id)
    assert old.is_detached and old.aliases == ()
    with pytest.raises(NotFound):
        service.resolve(NS, "k")
    with pytest.raises(NotFound):
        service.resolve(NS, "alias/payments")
    with pytest.raises(NotFound):
        service.resolve(NS, str(key_id))
    with pytest.raises(InvalidCiphertext):
        service.decrypt(blob)
    with pytest.raises(InvalidCiphertext):
        service.key_of_blob(blob)

    # The new tenant gets a key of its own, with the same name and alias.
    fresh = service.create_key(
        NS, "k", aliases=("alias/payments",), namespace_uid=NEW_NS_UID, object_uid=NEW_OBJ_UID
    )
    assert fresh.key_id != key_id
    assert service.resolve(NS, "alias/payments").key_id == fresh.key_id

    # A restart keeps both facts.
    again = reopen()
    assert again.get(key_id).is_detached
    assert again.resolve(NS, "k").key_id == fresh.key_id
    with pytest.raises(InvalidCiphertext):
        again.decrypt(blob)


def test_observed_namespace_detaches_keys_of_an_earlier_one(service: KeyService) -> None:
    key_id = _bound(service)
    assert service.observe_namespace(NS, NS_UID) == []
    detached = service.observe_namespace(NS, NEW_NS_UID)
    assert [r.key_id for r in detached] == [key_id]
    with pytest.raises(NotFound):
        service.encrypt(NS, "k", b"x")
    assert service.observe_namespace(NS, NEW_NS_UID) == []


def test_detached_key_keeps_its_deletion_schedule(service: KeyService) -> None:
    key_id = _bound(service)
    scheduled = service.schedule_deletion(key_id, 7)
    service.observe_namespace(NS, NEW_NS_UID)
    assert service.get(key_id).deletion_date == scheduled.deletion_date
    assert service.next_deadline(key_id) == scheduled.deletion_date


def test_new_object_without_claim_is_refused_and_nothing_changes(service: KeyService) -> None:
    key_id = _bound(service)
    with pytest.raises(KeyBoundElsewhere) as refused:
        service.bind(NS, "k", namespace_uid=NS_UID, object_uid=NEW_OBJ_UID)
    assert str(key_id) in refused.value.message
    assert service.resolve(NS, "k").object_uid == OBJ_UID


def test_new_object_that_claims_the_key_takes_it_over(service: KeyService) -> None:
    key_id = _bound(service)
    taken = service.bind(
        NS, "k", namespace_uid=NS_UID, object_uid=NEW_OBJ_UID, claimed_key_id=key_id
    )
    assert taken is not None and taken.key_id == key_id and taken.object_uid == NEW_OBJ_UID


def test_claim_across_namespaces_is_ignored(service: KeyService) -> None:
    key_id = _bound(service)
    claimed = service.bind(
        NS, "k", namespace_uid=NEW_NS_UID, object_uid=NEW_OBJ_UID, claimed_key_id=key_id
    )
    assert claimed is None
    assert service.get(key_id).is_detached


def test_detached_key_comes_back_by_claim_in_its_own_namespace(service: KeyService) -> None:
    key_id = _bound(service)
    with pytest.raises(KeyBoundElsewhere):
        service.bind(NS, "k", namespace_uid=NS_UID, object_uid=NEW_OBJ_UID)
    # Detach it the legacy way (an unclaimed schema-1 key), then claim it back.
    service._detach(service.get(key_id), "test")
    back = service.bind(
        NS, "k", namespace_uid=NS_UID, object_uid=NEW_OBJ_UID, claimed_key_id=key_id
    )
    assert back is not None and not back.is_detached
    assert service.resolve(NS, "k").key_id == key_id


def _schema_one_store(path: Path, root_key: RootKey) -> uuid.UUID:
    """A store as schema 1 wrote it, with one key (no UIDs)."""
    store = SqliteKeyStore(path, root_key)
    service = KeyService(store)
    key_id = service.create_key(NS, "k").key_id
    store.close()
    downgrade(path, 1)
    return key_id


def test_schema_one_keys_are_adopted_only_by_their_own_object(
    tmp_path: Path, root_key: RootKey
) -> None:
    path = tmp_path / "v1.db"
    key_id = _schema_one_store(path, root_key)
    store = SqliteKeyStore(path, root_key)
    try:
        (version,) = store._conn.execute("PRAGMA user_version").fetchone()
        assert version == sqlite_store.SCHEMA_VERSION
        service = KeyService(store)
        record = service.get(key_id)
        assert (record.namespace_uid, record.object_uid, record.is_detached) == (None, None, False)
        # The object whose status names the key adopts it, and its UIDs are recorded.
        adopted = service.bind(
            NS, "k", namespace_uid=NS_UID, object_uid=OBJ_UID, claimed_key_id=key_id
        )
        assert adopted is not None
        assert (adopted.namespace_uid, adopted.object_uid) == (NS_UID, OBJ_UID)
    finally:
        store.close()


def test_schema_one_key_is_not_inherited_by_a_stranger(tmp_path: Path, root_key: RootKey) -> None:
    path = tmp_path / "v1.db"
    key_id = _schema_one_store(path, root_key)
    store = SqliteKeyStore(path, root_key)
    try:
        service = KeyService(store)
        assert service.bind(NS, "k", namespace_uid=NEW_NS_UID, object_uid=NEW_OBJ_UID) is None
        assert service.get(key_id).is_detached
    finally:
        store.close()


# -- item 2: one spelling of a key id; caches keyed by key id -------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        "{%s}",
        "urn:uuid:%s",
        "%s-",
        "-%s",
        "UPPER",
        "NODASH",
        " %s",
    ],
)
def test_only_the_canonical_key_id_names_a_key(service: KeyService, spelling: str) -> None:
    key_id = service.create_key(NS, "k").key_id
    text = str(key_id)
    if spelling == "UPPER":
        reference = text.upper()
    elif spelling == "NODASH":
        reference = key_id.hex
    else:
        reference = spelling % text
    with pytest.raises(NotFound):
        service.encrypt(NS, reference, b"x")
    assert service.encrypt(NS, text, b"x").key_id == key_id


def test_fast_path_does_not_grow_with_references(service: KeyService) -> None:
    key_id = service.create_key(NS, "k", aliases=("alias/a",)).key_id
    for reference in ("k", "alias/a", str(key_id), key_id) * 50:
        service.encrypt(NS, reference, b"x")
    sizes = service._index.sizes()
    assert sizes["entries"] == sizes["encrypt_hits"] == sizes["names"] == sizes["aliases"] == 1
    assert service._index.entry(key_id).encrypt_hit is not None  # type: ignore[union-attr]


# -- item 9: the key resolved is the key used -----------------------------------------------


def test_resolved_key_id_ignores_an_alias_moved_meanwhile(service: KeyService) -> None:
    first = service.create_key(NS, "first", aliases=("alias/a",))
    second = service.create_key(NS, "second")
    resolved = service.resolve(NS, "alias/a")
    set_aliases(service, first.key_id, ())
    set_aliases(service, second.key_id, ("alias/a",))
    assert service.encrypt(NS, resolved.key_id, b"x").key_id == first.key_id
    assert service.generate_data_key(NS, resolved.key_id).key_id == first.key_id


def test_key_id_of_another_namespace_is_not_found(service: KeyService) -> None:
    other = service.create_key("other", "k")
    with pytest.raises(NotFound):
        service.encrypt(NS, other.key_id, b"x")

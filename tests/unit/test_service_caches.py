"""Every cache in the process has a size bound that caller input cannot push (issue 8, item 2).

4,000 calls, each with its own caller-chosen reference spelling, encryption context, forged
blob header and namespace, leave every map of the key index, the memos of the blob module and
the API's key-id text cache at sizes set by the store (keys, versions), or below their caps.
Entries are counted; memory is not measured.
"""

from __future__ import annotations

import struct
import uuid

import pytest

from kms_operator.crypto import blob as blobs
from kms_operator.errors import InvalidCiphertext, KmsError, NotFound
from kms_operator.keys import index
from kms_operator.keys.service import KeyService
from kms_operator.serving import calls

pytestmark = pytest.mark.unit

NS = "team-a"
CALLS = 4000


def _spellings(key_id: uuid.UUID, i: int) -> list[str]:
    text = str(key_id)
    return [
        f"{{{text}}}",
        f"urn:uuid:{text}",
        text.upper(),
        key_id.hex,
        f"{text}-{i}",
        f"name-{i}",
        f"alias/name-{i}",
    ]


def test_caller_input_leaves_every_cache_bounded(service: KeyService) -> None:
    keys = [service.create_key(NS, f"k{n}", aliases=[f"alias/k{n}"]).key_id for n in range(3)]
    calls.uuid_text.cache_clear()
    blobs_made = []
    for i in range(CALLS):
        key_id = keys[i % 3]
        for spelling in _spellings(key_id, i):
            with pytest.raises(NotFound):
                service.encrypt(NS, spelling, b"x")
        context = {"request": f"r-{i}", "caller": "c" * (i % 50)}
        reference = (f"k{i % 3}", f"alias/k{i % 3}", str(key_id), key_id)[i % 4]
        sealed = service.encrypt(NS, reference, b"data", context)
        calls.uuid_text(sealed.key_id)
        opened = service.decrypt(sealed.ciphertext_blob, context)
        calls.uuid_text(opened.key_id)
        # A big context every time: encoded on each call, never kept.
        big = {"blob": f"{i}-" + "b" * 4000}
        service.decrypt(service.encrypt(NS, key_id, b"big", big).ciphertext_blob, big)
        # Forged headers: a key id nobody has, a version the key does not have, garbage.
        for forged_key, version in ((uuid.uuid4(), 1), (key_id, 1000 + i)):
            forged = b"KMS1" + forged_key.bytes + struct.pack(">I", version) + bytes(28)
            with pytest.raises(KmsError) as caught:
                service.decrypt(forged, context)
            assert isinstance(caught.value, InvalidCiphertext)
        if i % 500 == 0:
            blobs_made.append((sealed.ciphertext_blob, context))
        service.observe_namespace(f"ns-{i}", f"uid-{i}")
        service.observe_namespace(f"ns-{i}", f"uid-{i}-again")

    sizes = service._index.sizes()
    assert sizes == {
        "entries": 3,
        "aeads": 3,
        "encrypt_hits": 3,
        "decrypt_hits": 3,
        "names": 3,
        "aliases": 3,
        "namespace_uids": min(CALLS, index.MAX_NAMESPACES),
    }
    memo = blobs.memo_sizes()
    assert memo["contexts"] <= blobs._MEMO_LIMIT
    assert memo["context_bytes"] <= blobs._MEMO_LIMIT * blobs._MEMO_CONTEXT_BYTES
    assert memo["key_ids"] <= blobs._MEMO_LIMIT
    assert calls.uuid_text.cache_info().currsize == 3
    # Bounded, and still right.
    for blob, context in blobs_made:
        assert service.decrypt(blob, context).plaintext == b"data"


def test_a_forgotten_namespace_uid_still_detaches_the_old_keys(service: KeyService) -> None:
    old = service.create_key("reused", "k", namespace_uid="uid-1", object_uid="obj-1")
    service.observe_namespace("reused", "uid-1")
    for i in range(index.MAX_NAMESPACES + 10):  # push "reused" out of the LRU
        service.observe_namespace(f"other-{i}", "u")
    assert service._index.namespace_uid("reused") is None
    detached = service.observe_namespace("reused", "uid-2")
    assert [r.key_id for r in detached] == [old.key_id]
    assert service.get(old.key_id).is_detached

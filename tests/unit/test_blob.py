"""The ciphertext blob of DESIGN.md section 4: known-answer vectors, invalid vectors, tampering.

The vectors in tests/vectors/blob_vectors.json are made by tests/vectors/make_vectors.py with
``cryptography``'s AESGCM and ``struct`` directly, never with ``seal()``, so they pin the format.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kms_operator.crypto import blob as blobs
from kms_operator.crypto import primitives
from kms_operator.errors import InvalidCiphertext, InvalidRequest
from kms_operator.keys.service import KeyService
from kms_operator.store.rootkey import RootKey
from kms_operator.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.unit

VECTORS_DIR = Path(__file__).resolve().parents[1] / "vectors"
VECTORS = json.loads((VECTORS_DIR / "blob_vectors.json").read_text(encoding="utf-8"))
KEY = bytes(range(32))
KEY_ID = uuid.UUID("6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b")
MIN_BLOB = blobs.HEADER_SIZE + blobs.TAG_SIZE


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS_DIR / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_GENERATOR = _load_generator()


def _ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["description"] for v in vectors]


def _assert_invalid(aead: primitives.Aead, blob: bytes, context: Any = None) -> None:
    with pytest.raises(InvalidCiphertext) as caught:
        blobs.open_sealed(aead, blob, context)
    assert str(caught.value) == InvalidCiphertext.MESSAGE
    assert caught.value.code == "InvalidCiphertext"


# -- known answers ---------------------------------------------------------------------------


def test_vectors_file_is_what_the_generator_writes() -> None:
    generator = _load_generator()
    text = (VECTORS_DIR / "blob_vectors.json").read_text(encoding="utf-8")
    assert text == generator.render(), "run tests/vectors/make_vectors.py"


def test_vectors_cover_the_required_cases() -> None:
    valid = VECTORS["valid"]
    assert any(v["context"] is None for v in valid)
    assert any(v["plaintext"] == "" for v in valid)
    assert any(len(bytes.fromhex(v["plaintext"])) == blobs.MAX_PLAINTEXT for v in valid)
    multi = [v for v in valid if v["context"] and len(v["context"]) > 2]
    assert multi
    assert any(not k.isascii() or not val.isascii() for k, val in multi[0]["context"].items())


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=_ids(VECTORS["valid"]))
def test_seal_matches_known_answer(vector: dict[str, Any]) -> None:
    aead = primitives.Aead(bytes.fromhex(vector["key"]))
    sealed = blobs.seal(
        aead,
        uuid.UUID(vector["key_id"]),
        vector["version"],
        bytes.fromhex(vector["plaintext"]),
        vector["context"],
        nonce=bytes.fromhex(vector["nonce"]),
    )
    assert sealed.hex() == vector["blob"]


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=_ids(VECTORS["valid"]))
def test_open_known_answer(vector: dict[str, Any]) -> None:
    aead = primitives.Aead(bytes.fromhex(vector["key"]))
    blob = bytes.fromhex(vector["blob"])
    assert blobs.open_sealed(aead, blob, vector["context"]).hex() == vector["plaintext"]
    header = blobs.parse_header(blob)
    assert header.key_id == uuid.UUID(vector["key_id"])
    assert header.version == vector["version"]
    assert header.nonce.hex() == vector["nonce"]
    assert header.pack() == blob[: blobs.HEADER_SIZE]


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=_ids(VECTORS["valid"]))
def test_known_answer_layout(vector: dict[str, Any]) -> None:
    """Byte for byte: magic, key id, big-endian version, nonce, then ciphertext and tag."""
    blob = bytes.fromhex(vector["blob"])
    assert blob[:4] == b"KMS1"
    assert blob[4:20] == uuid.UUID(vector["key_id"]).bytes
    assert blob[20:24] == struct.pack(">I", vector["version"])
    assert blob[24:36].hex() == vector["nonce"]
    assert len(blob) == 36 + len(bytes.fromhex(vector["plaintext"])) + 16
    assert blobs.canonical_context(vector["context"]).hex() == vector["canonical_context"]


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=_ids(VECTORS["invalid"]))
def test_invalid_vector_raises(vector: dict[str, Any]) -> None:
    aead = primitives.Aead(bytes.fromhex(vector["key"]))
    _assert_invalid(aead, bytes.fromhex(vector["blob"]), vector["context"])


def _reference() -> tuple[primitives.Aead, bytes, dict[str, str]]:
    context = {"purpose": "test"}
    aead = primitives.Aead(KEY)
    return aead, blobs.seal(aead, KEY_ID, 1, b"hello, kms", context), context


@pytest.mark.parametrize("length", range(MIN_BLOB))
def test_every_truncation_below_header_and_tag_is_invalid(length: int) -> None:
    aead, blob, context = _reference()
    _assert_invalid(aead, blob[:length], context)
    with pytest.raises(InvalidCiphertext):
        blobs.parse_header(blob[:length])


def test_every_truncation_of_a_blob_is_invalid() -> None:
    aead, blob, context = _reference()
    for length in range(len(blob)):
        _assert_invalid(aead, blob[:length], context)


def test_header_and_tag_alone_is_the_empty_plaintext() -> None:
    aead = primitives.Aead(KEY)
    blob = blobs.seal(aead, KEY_ID, 7, b"")
    assert len(blob) == MIN_BLOB
    assert blobs.open_sealed(aead, blob) == b""


def test_seal_draws_a_fresh_nonce() -> None:
    aead = primitives.Aead(KEY)
    first, second = (blobs.seal(aead, KEY_ID, 1, b"same") for _ in range(2))
    assert first != second
    assert first[24:36] != second[24:36]
    assert blobs.open_sealed(aead, first) == blobs.open_sealed(aead, second) == b"same"


def test_seal_refuses_a_nonce_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="12 bytes"):
        blobs.seal(primitives.Aead(KEY), KEY_ID, 1, b"x", nonce=b"\x00" * 11)


# -- canonical context -----------------------------------------------------------------------


@pytest.mark.parametrize("empty", [None, {}])
def test_canonical_context_of_nothing_is_empty(empty: dict[str, str] | None) -> None:
    assert blobs.canonical_context(empty) == b""


def test_canonical_context_rules() -> None:
    assert blobs.canonical_context({"b": "2", "a": "1"}) == b'{"a":"1","b":"2"}'
    assert blobs.canonical_context({"k": "é"}) == '{"k":"é"}'.encode()
    assert blobs.canonical_context({"k": "é"}) == b'{"k":"\xc3\xa9"}'
    assert blobs.canonical_context({"q": 'a"b\\c'}) == b'{"q":"a\\"b\\\\c"}'
    assert blobs.canonical_context({"\U0001f511": "1", "\uff01": "2"}) == (
        '{"\uff01":"2","\U0001f511":"1"}'.encode()
    )


def test_canonical_context_is_independent_of_insertion_order() -> None:
    forward = {"a": "1", "b": "2", "c": "3"}
    backward = dict(reversed(list(forward.items())))
    assert blobs.canonical_context(forward) == blobs.canonical_context(backward)
    aead = primitives.Aead(KEY)
    assert blobs.open_sealed(aead, blobs.seal(aead, KEY_ID, 1, b"x", forward), backward) == b"x"


@given(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=5))
@settings(max_examples=100, deadline=None)
def test_canonical_context_matches_independent_spelling(context: dict[str, str]) -> None:
    generator = _GENERATOR
    expected = generator.canonical(context)
    assert blobs.canonical_context(context) == expected
    if context:
        assert json.loads(expected.decode("utf-8")) == context


@pytest.mark.parametrize("context", [{"a": "\ud800"}, {"\udfff": "b"}])
def test_canonical_context_refuses_lone_surrogates(context: dict[str, str]) -> None:
    """JSON can carry "\\ud800"; it has no UTF-8 form, so it is a bad request, not a crash."""
    with pytest.raises(InvalidRequest) as caught:
        blobs.canonical_context(context)
    assert caught.value.field == "encryptionContext"
    aead, blob, _ = _reference()
    with pytest.raises(InvalidRequest):
        blobs.open_sealed(aead, blob, context)
    with pytest.raises(InvalidRequest):
        blobs.seal(aead, KEY_ID, 1, b"x", context)


# -- the Aead handle -------------------------------------------------------------------------


def test_aead_repr_hides_the_key() -> None:
    aead = primitives.Aead(KEY)
    for text in (repr(aead), str(aead)):
        assert KEY.hex() not in text
        assert repr(KEY) not in text
        assert "hidden" in text


def test_aead_refuses_a_key_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        primitives.Aead(b"\x00" * 16)


# -- tampering, property-based ---------------------------------------------------------------

_plaintexts = st.binary(max_size=300)
_contexts = st.one_of(
    st.none(), st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4)
)
_TAMPER = settings(max_examples=150, deadline=None)


@given(plaintext=_plaintexts, context=_contexts, version=st.integers(0, 2**32 - 1))
@_TAMPER
def test_round_trip(plaintext: bytes, context: dict[str, str] | None, version: int) -> None:
    aead = primitives.Aead(KEY)
    blob = blobs.seal(aead, KEY_ID, version, plaintext, context)
    assert blobs.open_sealed(aead, blob, context) == plaintext
    assert blobs.parse_header(blob).version == version


@given(plaintext=_plaintexts, context=_contexts, data=st.data())
@_TAMPER
def test_any_single_bit_flip_is_invalid(
    plaintext: bytes, context: dict[str, str] | None, data: st.DataObject
) -> None:
    aead = primitives.Aead(KEY)
    blob = bytearray(blobs.seal(aead, KEY_ID, 1, plaintext, context))
    bit = data.draw(st.integers(0, len(blob) * 8 - 1), label="bit")
    blob[bit // 8] ^= 1 << (bit % 8)
    _assert_invalid(aead, bytes(blob), context)


@given(plaintext=_plaintexts, context=_contexts, data=st.data())
@_TAMPER
def test_any_truncation_is_invalid(
    plaintext: bytes, context: dict[str, str] | None, data: st.DataObject
) -> None:
    aead = primitives.Aead(KEY)
    blob = blobs.seal(aead, KEY_ID, 1, plaintext, context)
    length = data.draw(st.integers(0, len(blob) - 1), label="length")
    _assert_invalid(aead, blob[:length], context)


@given(plaintext=_plaintexts, context=_contexts, other=_contexts)
@_TAMPER
def test_a_wrong_context_is_invalid(
    plaintext: bytes, context: dict[str, str] | None, other: dict[str, str] | None
) -> None:
    if blobs.canonical_context(context) == blobs.canonical_context(other):
        return
    aead = primitives.Aead(KEY)
    _assert_invalid(aead, blobs.seal(aead, KEY_ID, 1, plaintext, context), other)


@given(plaintext=_plaintexts, context=_contexts, other_key=st.binary(min_size=32, max_size=32))
@_TAMPER
def test_a_blob_of_another_key_is_invalid(
    plaintext: bytes, context: dict[str, str] | None, other_key: bytes
) -> None:
    if other_key == KEY:
        return
    blob = blobs.seal(primitives.Aead(other_key), KEY_ID, 1, plaintext, context)
    _assert_invalid(primitives.Aead(KEY), blob, context)


@given(garbage=st.binary(max_size=200), context=_contexts)
@_TAMPER
def test_arbitrary_bytes_are_invalid(garbage: bytes, context: dict[str, str] | None) -> None:
    _assert_invalid(primitives.Aead(KEY), garbage, context)
    _assert_invalid(primitives.Aead(KEY), b"KMS1" + garbage, context)


# -- through the service: unknown key or version is the same error ---------------------------


class _FixedClock:
    def now(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC)

    def monotonic_ns(self) -> int:
        return 0


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("blob-service") / "store.db"
    store = SqliteKeyStore(path, RootKey.generate())
    yield KeyService(store, clock=_FixedClock())
    store.close()


@pytest.fixture(scope="module")
def sealed(service: KeyService) -> tuple[bytes, dict[str, str]]:
    service.create_key("ns", "blob-key")
    context = {"kms.cmk.dev/namespace": "ns", "app": "ünïcode"}
    return service.encrypt("ns", "blob-key", b"secret data", context).ciphertext_blob, context


@given(data=st.data())
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_service_decrypt_of_a_tampered_blob_is_invalid(
    service: KeyService, sealed: tuple[bytes, dict[str, str]], data: st.DataObject
) -> None:
    blob, context = sealed
    assert service.decrypt(blob, context).plaintext == b"secret data"
    how = data.draw(st.sampled_from(["flip", "truncate", "context", "unknown-key"]), label="how")
    if how == "flip":
        bit = data.draw(st.integers(0, len(blob) * 8 - 1), label="bit")
        changed = bytearray(blob)
        changed[bit // 8] ^= 1 << (bit % 8)
        tampered, used = bytes(changed), context
    elif how == "truncate":
        tampered, used = blob[: data.draw(st.integers(0, len(blob) - 1), label="len")], context
    elif how == "context":
        tampered, used = blob, {**context, "app": "other"}
    else:
        tampered, used = blob[:4] + uuid.uuid4().bytes + blob[20:], context
    with pytest.raises(InvalidCiphertext) as caught:
        service.decrypt(tampered, used)
    assert str(caught.value) == InvalidCiphertext.MESSAGE


def test_service_decrypt_of_an_unknown_version_is_invalid(
    service: KeyService, sealed: tuple[bytes, dict[str, str]]
) -> None:
    blob, context = sealed
    for version in (0, 2, 2**32 - 1):
        forged = blob[:20] + struct.pack(">I", version) + blob[24:]
        with pytest.raises(InvalidCiphertext) as caught:
            service.decrypt(forged, context)
        assert str(caught.value) == InvalidCiphertext.MESSAGE

"""The ciphertext blob of DESIGN.md section 4, byte for byte.

::

    "KMS1" | key id (16) | key version (uint32 BE) | nonce (12) | AES-256-GCM ciphertext+tag
    AAD = every byte before the ciphertext || canonical(encryptionContext)

The header names the key and version, so decryption looks the key up directly instead of
trying keys one by one. Every way a blob can be wrong raises the one
:class:`~kms_operator.errors.InvalidCiphertext`; the reason goes to the debug log only.
"""

from __future__ import annotations

import json
import logging
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from kms_operator.errors import InvalidCiphertext, InvalidRequest

from . import primitives

MAGIC = b"KMS1"
_HEADER = struct.Struct(">4s16sI12s")
_PREFIX_SIZE = 24  # magic, key id, version: the same for every blob of one key version
HEADER_SIZE = _HEADER.size  # 36
TAG_SIZE = 16
MAX_PLAINTEXT = 4096

log = logging.getLogger(__name__)

_K = TypeVar("_K")
_V = TypeVar("_V")

EncryptionContext = Mapping[str, str]

_CONTEXT_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
#: Bounded memos of the hot path (contexts seen, key ids parsed); cleared when full, so a
#: caller sending ever-new values costs only the work the memo would have saved. Contexts
#: longer than _MEMO_CONTEXT_BYTES are encoded each time: with the entry count, that bounds
#: the memo's bytes too (a 64 KiB context repeated would otherwise pin 1,024 such bodies).
_MEMO_LIMIT = 1024
_MEMO_CONTEXT_BYTES = 1024
_CANONICAL: dict[tuple[tuple[str, str], ...], bytes] = {}
_KEY_IDS: dict[bytes, uuid.UUID] = {}


def _remember(memo: dict[_K, _V], key: _K, value: _V) -> None:
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = value


def canonical_context(context: EncryptionContext | None) -> bytes:
    """UTF-8 JSON with sorted keys and no spaces; an empty or absent context is ``b""``."""
    if not context:
        return b""
    items = tuple(context.items())
    # Contexts repeat (one per DataKey, per caller), so the encoding is remembered. Only
    # all-string contexts are stored (1 == True would otherwise share an entry between two
    # encodings), and no other type compares equal to a string, so a hit is always right.
    try:
        cached = _CANONICAL.get(items)
    except TypeError:  # an unhashable value: encode without the memo
        cached = None
    if cached is not None:
        return cached
    text = _CONTEXT_ENCODER.encode(dict(items))
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (JSON "\ud800") has no UTF-8 form: a bad request, not a crash.
        raise InvalidRequest(
            "the encryption context must be valid Unicode text", field="encryptionContext"
        ) from None
    if len(encoded) <= _MEMO_CONTEXT_BYTES and all(
        type(k) is str and type(v) is str for k, v in items
    ):
        _remember(_CANONICAL, items, encoded)
    return encoded


def memo_sizes() -> dict[str, int]:
    """Entries in each memo of this module (tests check that caller input keeps them bounded)."""
    return {
        "contexts": len(_CANONICAL),
        "context_bytes": sum(len(encoded) for encoded in _CANONICAL.copy().values()),
        "key_ids": len(_KEY_IDS),
    }


@dataclass(frozen=True, slots=True)
class BlobHeader:
    key_id: uuid.UUID
    version: int
    nonce: bytes

    def pack(self) -> bytes:
        return _HEADER.pack(MAGIC, self.key_id.bytes, self.version, self.nonce)


def parse_header(blob: bytes) -> BlobHeader:
    """Read the header without decrypting; a blob too short to hold header and tag is invalid."""
    if len(blob) < HEADER_SIZE + TAG_SIZE:
        log.debug("invalid ciphertext: %d bytes is shorter than header and tag", len(blob))
        raise InvalidCiphertext()
    magic, raw_key_id, version, nonce = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        log.debug("invalid ciphertext: unknown format prefix")
        raise InvalidCiphertext()
    key_id = _KEY_IDS.get(raw_key_id)
    if key_id is None:
        key_id = uuid.UUID(bytes=raw_key_id)
        _remember(_KEY_IDS, raw_key_id, key_id)
    return BlobHeader(key_id, version, nonce)


def seal(
    aead: primitives.Aead,
    key_id: uuid.UUID,
    version: int,
    plaintext: bytes,
    context: EncryptionContext | None = None,
    *,
    nonce: bytes | None = None,
) -> bytes:
    """Encrypt ``plaintext`` into a blob. ``nonce`` is for known-answer tests only."""
    if nonce is None:
        nonce = primitives.random_bytes(primitives.NONCE_SIZE)
    elif len(nonce) != primitives.NONCE_SIZE:
        raise ValueError("the nonce is 12 bytes")
    header = _HEADER.pack(MAGIC, key_id.bytes, version, nonce)
    return header + aead.encrypt(nonce, plaintext, header + canonical_context(context))


def header_prefix(key_id: uuid.UUID, version: int) -> bytes:
    """The fixed part of every header for one key version: magic, key id, version."""
    return MAGIC + key_id.bytes + struct.pack(">I", version)


def header_prefix_of(blob: bytes) -> bytes | None:
    """The first 24 bytes of a blob long enough to be one, else None (not yet judged)."""
    if len(blob) < HEADER_SIZE + TAG_SIZE:
        return None
    return blob[:_PREFIX_SIZE]


def seal_prefixed(
    aead: primitives.Aead,
    prefix: bytes,
    plaintext: bytes,
    context: EncryptionContext | None = None,
) -> bytes:
    """:func:`seal` for callers that keep the key version's :func:`header_prefix`."""
    nonce = primitives.random_bytes(primitives.NONCE_SIZE)
    header = prefix + nonce
    return header + aead.encrypt(nonce, plaintext, header + canonical_context(context))


def open_prefixed(
    aead: primitives.Aead, blob: bytes, context: EncryptionContext | None = None
) -> bytes:
    """:func:`open_sealed` for a blob whose prefix was already matched to ``aead``."""
    try:
        return aead.decrypt(
            blob[_PREFIX_SIZE:HEADER_SIZE],
            blob[HEADER_SIZE:],
            blob[:HEADER_SIZE] + canonical_context(context),
        )
    except primitives.AuthenticationFailed:
        log.debug("invalid ciphertext: authentication failed")
        raise InvalidCiphertext() from None


def open_sealed(
    aead: primitives.Aead,
    blob: bytes,
    context: EncryptionContext | None = None,
    *,
    header: BlobHeader | None = None,
) -> bytes:
    """Decrypt a blob whose header was already matched to ``aead``'s key and version.

    ``header`` is ``parse_header(blob)`` when the caller has it already.
    """
    if header is None:
        header = parse_header(blob)
    try:
        return aead.decrypt(
            header.nonce, blob[HEADER_SIZE:], blob[:HEADER_SIZE] + canonical_context(context)
        )
    except primitives.AuthenticationFailed:
        log.debug(
            "invalid ciphertext: authentication failed for key %s version %d",
            header.key_id,
            header.version,
        )
        raise InvalidCiphertext() from None

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

from kms_operator.errors import InvalidCiphertext, InvalidRequest

from . import primitives

MAGIC = b"KMS1"
_HEADER = struct.Struct(">4s16sI12s")
HEADER_SIZE = _HEADER.size  # 36
TAG_SIZE = 16
MAX_PLAINTEXT = 4096

log = logging.getLogger(__name__)

EncryptionContext = Mapping[str, str]


def canonical_context(context: EncryptionContext | None) -> bytes:
    """UTF-8 JSON with sorted keys and no spaces; an empty or absent context is ``b""``."""
    if not context:
        return b""
    text = json.dumps(dict(context), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (JSON "\ud800") has no UTF-8 form: a bad request, not a crash.
        raise InvalidRequest(
            "the encryption context must be valid Unicode text", field="encryptionContext"
        ) from None


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
    magic, key_id, version, nonce = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        log.debug("invalid ciphertext: unknown format prefix")
        raise InvalidCiphertext()
    return BlobHeader(uuid.UUID(bytes=key_id), version, nonce)


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


def open_sealed(
    aead: primitives.Aead,
    blob: bytes,
    context: EncryptionContext | None = None,
) -> bytes:
    """Decrypt a blob whose header was already matched to ``aead``'s key and version."""
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

"""The root of trust: a 32-byte key that wraps every version's material at rest.

The embedded source is a file (in the chart, a Secret mounted read-only and kept across
upgrades). It is created with mode 0600 when absent; a wrong length or a file that group or
others may read is refused, because a root key anyone on the node can read protects nothing.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import struct
import uuid
from pathlib import Path

from kms_operator.crypto import primitives
from kms_operator.errors import StoreError

ROOT_KEY_SIZE = 32
_MATERIAL_AAD = b"kms.cmk.dev/material/v1|"
_SECRET_AAD = b"kms.cmk.dev/secret/v1|"
_FINGERPRINT_KEY_LABEL = b"kms.cmk.dev/fingerprint-key/v2"
_FINGERPRINT_V1 = b"kms.cmk.dev/material-fingerprint/v1|"
_FINGERPRINT_V2 = b"kms.cmk.dev/material-fingerprint/v2|"


class RootKeyError(StoreError):
    """The root key file is missing, malformed or too widely readable."""


class RootKey:
    """Wraps and unwraps material with AES-256-GCM; AAD binds the key id and version."""

    __slots__ = ("_aead", "_fingerprint_key")

    def __init__(self, key: bytes) -> None:
        if len(key) != ROOT_KEY_SIZE:
            raise RootKeyError(f"a root key is {ROOT_KEY_SIZE} bytes, got {len(key)}")
        self._aead = primitives.Aead(key)
        # A key of its own for fingerprints (HMAC(root key, label)); neither it nor the root
        # key ever leaves this object.
        self._fingerprint_key = primitives.hmac_sha256(key, _FINGERPRINT_KEY_LABEL)

    def __repr__(self) -> str:
        return "RootKey(<hidden>)"

    @classmethod
    def generate(cls) -> RootKey:
        return cls(primitives.random_bytes(ROOT_KEY_SIZE))

    def wrap_material(self, key_id: uuid.UUID, version: int, material: bytes) -> bytes:
        return self._wrap(_material_aad(key_id, version), material)

    def unwrap_material(self, key_id: uuid.UUID, version: int, wrapped: bytes) -> bytes:
        return self._unwrap(_material_aad(key_id, version), wrapped)

    def wrap_secret(self, label: str, secret: bytes) -> bytes:
        """Wrap something other than key material (import private keys, the check value)."""
        return self._wrap(_SECRET_AAD + label.encode(), secret)

    def unwrap_secret(self, label: str, wrapped: bytes) -> bytes:
        return self._unwrap(_SECRET_AAD + label.encode(), wrapped)

    def material_fingerprint(self, key_id: uuid.UUID, material: bytes) -> bytes:
        """The one-way fingerprint of imported material that the store keeps (v2).

        ``HMAC(fingerprint key, HMAC(key id, material))``: the inner HMAC keeps equal material
        in two keys apart, the outer one, keyed from the root key, means a copy of the store
        alone cannot confirm a guess of low-entropy material.
        """
        return self.upgrade_fingerprint(legacy_fingerprint(key_id, material))

    def upgrade_fingerprint(self, v1: bytes) -> bytes:
        """The v2 fingerprint of a v1 one (``HMAC(key id, material)``), without the material."""
        return primitives.hmac_sha256(self._fingerprint_key, _FINGERPRINT_V2 + v1)

    def _wrap(self, aad: bytes, data: bytes) -> bytes:
        nonce = primitives.random_bytes(primitives.NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, data, aad)

    def _unwrap(self, aad: bytes, wrapped: bytes) -> bytes:
        try:
            if len(wrapped) < primitives.NONCE_SIZE:
                raise primitives.AuthenticationFailed
            return self._aead.decrypt(
                wrapped[: primitives.NONCE_SIZE], wrapped[primitives.NONCE_SIZE :], aad
            )
        except primitives.AuthenticationFailed:
            raise StoreError(
                "stored material does not unwrap under the root key: "
                "wrong root key or a corrupted store"
            ) from None


def legacy_fingerprint(key_id: uuid.UUID, material: bytes) -> bytes:
    """The v1 fingerprint, HMAC-SHA-256 keyed by the (public) key id; stores before schema 4
    kept it. Only the inner part of the v2 fingerprint now: never stored on its own."""
    return primitives.hmac_sha256(key_id.bytes, _FINGERPRINT_V1 + material)


def _material_aad(key_id: uuid.UUID, version: int) -> bytes:
    return _MATERIAL_AAD + key_id.bytes + struct.pack(">I", version)


def load_root_key_file(path: Path, *, create: bool = True) -> RootKey:
    """Read the root key; create it (mode 0600, raw 32 bytes) when absent and ``create``.

    Accepted content: exactly 32 raw bytes, or their standard base64 (a trailing newline is
    fine), which is what ``kubectl create secret --from-file`` and Helm produce.
    """
    if not path.exists():
        if not create:
            raise RootKeyError(f"root key file {path} does not exist")
        _create_root_key_file(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise RootKeyError(
            f"root key file {path} has mode {stat.S_IMODE(mode):04o}: group and others must "
            "have no access (chmod 600, or defaultMode 0400 on the mounted Secret)"
        )
    content = path.read_bytes()
    if len(content) == ROOT_KEY_SIZE:
        return RootKey(content)
    try:
        decoded = base64.b64decode(content.strip(), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != ROOT_KEY_SIZE:
        raise RootKeyError(
            f"root key file {path} must hold {ROOT_KEY_SIZE} raw bytes or their base64; "
            f"it holds {len(content)} bytes"
        )
    return RootKey(decoded)


def _create_root_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process created it between our exists() and open(): use theirs
    with os.fdopen(fd, "wb") as out:
        out.write(primitives.random_bytes(ROOT_KEY_SIZE))
        out.flush()
        os.fsync(out.fileno())

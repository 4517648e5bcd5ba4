"""The only module that imports ``cryptography.hazmat``: AEAD, RSA-OAEP, AES key wrap, HMAC.

Everything above it uses these functions and the :class:`Aead` handle, so swapping the
provider (or auditing what primitives we use) means reading one file.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_SIZE = 12
AES_256_KEY_SIZE = 32


class AuthenticationFailed(Exception):
    """The AEAD tag, an RSA-OAEP padding or an AES key-wrap integrity check did not verify."""


class Aead:
    """AES-256-GCM bound to one key. ``repr`` never shows the key."""

    __slots__ = ("_aesgcm",)

    def __init__(self, key: bytes) -> None:
        if len(key) != AES_256_KEY_SIZE:
            raise ValueError("an AES-256-GCM key is 32 bytes")
        self._aesgcm = AESGCM(key)

    def __repr__(self) -> str:
        return "Aead(<AES-256-GCM key hidden>)"

    def encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aesgcm.encrypt(nonce, plaintext, aad)

    def decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return self._aesgcm.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise AuthenticationFailed from None


def random_bytes(n: int) -> bytes:
    return secrets.token_bytes(n)


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def generate_rsa_private_key_pem(bits: int) -> bytes:
    """A new RSA private key (e=65537) as unencrypted PKCS#8 PEM; callers wrap it at rest."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def rsa_public_key_pem(private_key_pem: bytes) -> bytes:
    key = _load_private_key(private_key_pem)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def rsa_key_size(public_key_pem: bytes) -> int:
    return _load_public_key(public_key_pem).key_size


def _oaep_sha256() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def rsa_oaep_sha256_encrypt(public_key_pem: bytes, plaintext: bytes) -> bytes:
    return _load_public_key(public_key_pem).encrypt(plaintext, _oaep_sha256())


def rsa_oaep_sha256_decrypt(private_key_pem: bytes, ciphertext: bytes) -> bytes:
    try:
        return _load_private_key(private_key_pem).decrypt(ciphertext, _oaep_sha256())
    except ValueError:
        raise AuthenticationFailed from None


def aes_key_wrap_with_padding(kek: bytes, key: bytes) -> bytes:
    return keywrap.aes_key_wrap_with_padding(kek, key)


def aes_key_unwrap_with_padding(kek: bytes, wrapped: bytes) -> bytes:
    try:
        return keywrap.aes_key_unwrap_with_padding(kek, wrapped)
    except (keywrap.InvalidUnwrap, ValueError):
        raise AuthenticationFailed from None


def _load_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key")
    return key


def _load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key

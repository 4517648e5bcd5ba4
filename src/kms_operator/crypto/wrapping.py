"""Wrapping of imported key material (DESIGN.md section 2, ``KeyMaterialImport``).

The operator publishes an RSA public key; the user wraps 32 bytes of material with it and
hands the result over. Two algorithms, as AWS KMS names them:

* ``RSAES_OAEP_SHA_256``: RSA-OAEP (SHA-256, MGF1-SHA-256, no label) of the material.
* ``RSA_AES_KEY_WRAP_SHA_256``: RSA-OAEP-SHA-256 of a fresh 32-byte AES key, immediately
  followed by AES key wrap with padding (RFC 5649) of the material under that AES key.

``wrap_material`` is the user's side (``kmsctl`` and tests); the operator only unwraps.
"""

from __future__ import annotations

import enum

from . import primitives


class WrappingAlgorithm(enum.StrEnum):
    RSAES_OAEP_SHA_256 = "RSAES_OAEP_SHA_256"
    RSA_AES_KEY_WRAP_SHA_256 = "RSA_AES_KEY_WRAP_SHA_256"


class WrappingKeySpec(enum.StrEnum):
    RSA_2048 = "RSA_2048"
    RSA_3072 = "RSA_3072"
    RSA_4096 = "RSA_4096"

    @property
    def bits(self) -> int:
        return int(self.value.removeprefix("RSA_"))


class UnwrapFailed(Exception):
    """The wrapped material does not decrypt under the wrapping key (no detail, no oracle)."""


def generate_wrapping_key(spec: WrappingKeySpec) -> tuple[bytes, bytes]:
    """A new wrapping key pair as ``(private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)``."""
    private_pem = primitives.generate_rsa_private_key_pem(spec.bits)
    return private_pem, primitives.rsa_public_key_pem(private_pem)


def wrap_material(algorithm: WrappingAlgorithm, public_key_pem: bytes, material: bytes) -> bytes:
    if algorithm is WrappingAlgorithm.RSAES_OAEP_SHA_256:
        return primitives.rsa_oaep_sha256_encrypt(public_key_pem, material)
    ephemeral = primitives.random_bytes(primitives.AES_256_KEY_SIZE)
    return primitives.rsa_oaep_sha256_encrypt(
        public_key_pem, ephemeral
    ) + primitives.aes_key_wrap_with_padding(ephemeral, material)


def unwrap_material(algorithm: WrappingAlgorithm, private_key_pem: bytes, wrapped: bytes) -> bytes:
    try:
        if algorithm is WrappingAlgorithm.RSAES_OAEP_SHA_256:
            return primitives.rsa_oaep_sha256_decrypt(private_key_pem, wrapped)
        modulus_bytes = primitives.rsa_key_size(primitives.rsa_public_key_pem(private_key_pem)) // 8
        if len(wrapped) <= modulus_bytes:
            raise UnwrapFailed
        ephemeral = primitives.rsa_oaep_sha256_decrypt(private_key_pem, wrapped[:modulus_bytes])
        if len(ephemeral) != primitives.AES_256_KEY_SIZE:
            raise UnwrapFailed
        return primitives.aes_key_unwrap_with_padding(ephemeral, wrapped[modulus_bytes:])
    except primitives.AuthenticationFailed:
        raise UnwrapFailed from None

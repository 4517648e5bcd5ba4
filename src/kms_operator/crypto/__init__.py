"""Cryptographic building blocks: the ciphertext blob, AES-256-GCM and import wrapping.

Only :mod:`kms_operator.crypto.primitives` touches ``cryptography.hazmat``; the rest of the
package speaks in bytes and the small types defined here.
"""

"""Errors of the KMS, free of any framework.

Each error carries the stable ``code`` and HTTP ``status`` of DESIGN.md section 6, so the edges
(HTTP API, Kopf handlers, CLI) map them once. Messages never contain key material, plaintext
or tokens: they name states, fields and key ids only.
"""

from __future__ import annotations

from typing import ClassVar


class KmsError(Exception):
    """Base of every error the KMS raises on purpose."""

    code: ClassVar[str] = "InternalError"
    status: ClassVar[int] = 500
    #: True when retrying the same request later may succeed (store busy, ...).
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(KmsError):
    """The request is malformed; ``field`` names the offending field when one is known."""

    code = "InvalidRequest"
    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidCiphertext(KmsError):
    """Every decryption failure, whatever its cause: one code and one message, no oracle."""

    code = "InvalidCiphertext"
    status = 400
    MESSAGE: ClassVar[str] = (
        "the ciphertext is not valid: it was altered, truncated, made under another key, "
        "or the encryption context does not match"
    )

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


class Unauthenticated(KmsError):
    code = "Unauthenticated"
    status = 401


class AccessDenied(KmsError):
    code = "AccessDenied"
    status = 403


class NotFound(KmsError):
    code = "NotFound"
    status = 404


class KeyStateError(KmsError):
    """The key's state forbids the operation; the message names the state."""

    code = "KeyInvalidState"
    status = 409


class KeyDisabled(KeyStateError):
    code = "KeyDisabled"


class KeyPendingImport(KeyStateError):
    code = "KeyPendingImport"


class KeyPendingDeletion(KeyStateError):
    code = "KeyPendingDeletion"


class AliasConflict(KmsError):
    code = "AlreadyExists"
    status = 409


class AlreadyExists(KmsError):
    """An object of that name exists already: a create refused."""

    code = "AlreadyExists"
    status = 409


class Conflict(KmsError):
    """The object changed since it was read (a resourceVersion or UID precondition failed)."""

    code = "Conflict"
    status = 409
    retryable = True


class KeyBoundElsewhere(KmsError):
    """The object's name holds a key of an earlier object that this one did not claim."""

    code = "KeyBoundElsewhere"
    status = 409


class DefaultKeyProtected(KmsError):
    """Default keys cannot be disabled, deleted, rotated on demand or given imported material."""

    code = "DefaultKeyProtected"
    status = 409


class InvalidImportToken(KmsError):
    code = "InvalidImportToken"
    status = 400


class ExpiredImportToken(KmsError):
    code = "ExpiredImportToken"
    status = 400


class IncorrectKeyMaterial(KmsError):
    """Imported material that cannot be unwrapped, has the wrong size, or is not the key's."""

    code = "IncorrectKeyMaterial"
    status = 400


class StoreError(KmsError):
    """The store cannot be opened or used (wrong root key, corrupt file, disk full)."""

    code = "InternalError"
    status = 500
    retryable = True

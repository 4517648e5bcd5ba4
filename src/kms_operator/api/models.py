"""The API's bodies, declared once (:mod:`.bodies`): the routes read and write them, and the
OpenAPI document (:mod:`.openapi`) describes them from the same declaration.

Requests are read strictly (see :mod:`.bodies`); answers carry key ids and versions, never
anything the CMK's status does not publish, and material only where the route returns it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from kms_operator.crypto.blob import HEADER_SIZE, TAG_SIZE
from kms_operator.keys.service import DATA_KEY_SPECS, MAX_PLAINTEXT, RANDOM_BYTES
from kms_operator.store.records import KeySpec, KeyState, KeyUsage, Origin, VersionState

from .bodies import Request, Response
from .kinds import Binary, Context, Flag, Integer, Text

#: Largest blob the service can make, for an early check of the body.
MAX_BLOB = HEADER_SIZE + MAX_PLAINTEXT + TAG_SIZE

EncryptionContext = Annotated[
    dict[str, str], Context("Authenticated, not encrypted: decrypt needs the same map.")
]
KeyId = Annotated[str, Text("The key id (status.keyId).", format="uuid")]
KeyVersion = Annotated[int, Integer(1, description="The key version used.")]
Blob = Annotated[bytes, Binary(MAX_BLOB, "A blob from encrypt (DESIGN.md section 4).")]
NumberOfBytes = Annotated[int, Integer(*RANDOM_BYTES)]
Time = Annotated[str | None, Text(format="date-time")]

_EXAMPLE_KEY_ID = "0f8e5c1a-3b7d-4e2a-9c61-5d0b7a4e8f21"
#: A blob of key version 1 of the example key id: "card 4111" under {"order": "42"}.
_EXAMPLE_BLOB = (
    "S01TMQ+OXBo7fU4qnGFdC3pOjyEAAAAB+QnTmU236R5HF0Zpx1+f2SyClLpOCu0tpZg0MaeA/NnEOZ4USQ=="
)


# -- requests --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncryptRequest(Request):
    """Plaintext to encrypt under the key's current version."""

    EXAMPLES = (
        {"plaintext": "Y2FyZCA0MTEx"},
        {"plaintext": "Y2FyZCA0MTEx", "encryptionContext": {"order": "42"}},
    )

    plaintext: Annotated[bytes, Binary(MAX_PLAINTEXT, f"At most {MAX_PLAINTEXT} bytes.")] = field(
        repr=False
    )
    encryption_context: EncryptionContext | None = None


@dataclass(frozen=True, slots=True)
class GenerateDataKeyRequest(Request):
    """A data key of keySpec (AES_256 when neither keySpec nor numberOfBytes is given) or of
    numberOfBytes bytes."""

    EXAMPLES = (
        {},
        {"keySpec": "AES_128", "encryptionContext": {"app": "billing"}},
        {"numberOfBytes": 64, "withoutPlaintext": True},
    )
    EXCLUSIVE = (("keySpec", "numberOfBytes"),)

    key_spec: Annotated[str, Text(choices=tuple(DATA_KEY_SPECS))] | None = None
    number_of_bytes: Annotated[int, Integer(*RANDOM_BYTES, "Instead of keySpec.")] | None = None
    encryption_context: EncryptionContext | None = None
    without_plaintext: Annotated[bool, Flag("Return the encrypted data key only.")] = False


@dataclass(frozen=True, slots=True)
class DecryptRequest(Request):
    """A blob to decrypt; the key comes from its header."""

    EXAMPLES = ({"ciphertextBlob": _EXAMPLE_BLOB, "encryptionContext": {"order": "42"}},)

    ciphertext_blob: Blob = field(repr=False)
    encryption_context: EncryptionContext | None = None


@dataclass(frozen=True, slots=True)
class Destination(Request):
    """The key to encrypt under."""

    namespace: Annotated[str, Text(non_empty=True)]
    key: Annotated[str, Text("Name, key id or alias/<name>.", non_empty=True)]


@dataclass(frozen=True, slots=True)
class ReEncryptRequest(Request):
    """A blob to decrypt and encrypt again under the destination key."""

    EXAMPLES = (
        {
            "ciphertextBlob": _EXAMPLE_BLOB,
            "sourceEncryptionContext": {"order": "42"},
            "destination": {"namespace": "archive", "key": "alias/archive"},
            "destinationEncryptionContext": {"moved": "2026"},
        },
    )

    ciphertext_blob: Blob = field(repr=False)
    destination: Destination
    source_encryption_context: EncryptionContext | None = None
    destination_encryption_context: EncryptionContext | None = None


@dataclass(frozen=True, slots=True)
class RandomRequest(Request):
    """How many random bytes."""

    EXAMPLES = ({"numberOfBytes": 32},)

    number_of_bytes: NumberOfBytes


# -- responses -------------------------------------------------------------------------------


@dataclass(slots=True)
class EncryptResponse(Response):
    """The blob, and the key and version that made it."""

    EXAMPLES = ({"ciphertextBlob": _EXAMPLE_BLOB, "keyId": _EXAMPLE_KEY_ID, "keyVersion": 1},)

    ciphertext_blob: Annotated[bytes, Binary(description="The ciphertext blob.")] = field(
        repr=False
    )
    key_id: KeyId
    key_version: KeyVersion


@dataclass(slots=True)
class GenerateDataKeyResponse(Response):
    """The data key encrypted under the CMK, and in plaintext unless withoutPlaintext."""

    EXAMPLES = (
        {
            "ciphertextBlob": "S01TMQ+OXBo7fU4qnGFdC3pOjyEAAAABim5ijCJeYYsrua96HhqQSML9"
            "ParTXuYmQIUFnrk+7jB/PfeG0JrqHUIunTbXSc3mQVanSH9SZk4bzkph",
            "keyId": _EXAMPLE_KEY_ID,
            "keyVersion": 1,
            "plaintext": "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=",
        },
    )

    ciphertext_blob: Annotated[bytes, Binary(description="The data key, encrypted.")] = field(
        repr=False
    )
    key_id: KeyId
    key_version: KeyVersion
    plaintext: Annotated[bytes, Binary(description="The data key.")] | None = field(
        default=None, repr=False
    )


@dataclass(slots=True)
class DecryptResponse(Response):
    """The plaintext, and the key and version that opened it."""

    EXAMPLES = ({"plaintext": "Y2FyZCA0MTEx", "keyId": _EXAMPLE_KEY_ID, "keyVersion": 1},)

    plaintext: Annotated[bytes, Binary()] = field(repr=False)
    key_id: KeyId
    key_version: KeyVersion


@dataclass(slots=True)
class ReEncryptResponse(Response):
    """The blob under the destination key, and the source key and version."""

    EXAMPLES = (
        {
            "ciphertextBlob": _EXAMPLE_BLOB,
            "keyId": "7c2d0e4b-91aa-4f3e-8b5d-2e6f1a9c0d37",
            "keyVersion": 3,
            "sourceKeyId": _EXAMPLE_KEY_ID,
            "sourceKeyVersion": 1,
        },
    )

    ciphertext_blob: Annotated[bytes, Binary(description="The blob under the destination key.")]
    key_id: KeyId
    key_version: KeyVersion
    source_key_id: KeyId
    source_key_version: KeyVersion


@dataclass(slots=True)
class RandomResponse(Response):
    """Random bytes."""

    EXAMPLES = ({"plaintext": "3q2+7w=="},)

    plaintext: Annotated[bytes, Binary()] = field(repr=False)


@dataclass(slots=True)
class KeyVersionMetadata(Response):
    """One version of the key, without its material."""

    version: Annotated[int, Integer(1)]
    created_at: Time
    state: Annotated[str, Text(choices=tuple(s.value for s in VersionState))]
    imported_at: Time
    expires_at: Time


@dataclass(slots=True)
class Rotation(Response):
    """Automatic rotation: its period (null: off) and dates."""

    period_days: Annotated[int, Integer()] | None
    last_rotated_at: Time
    next_rotation_at: Time


@dataclass(slots=True)
class KeyMetadata(Response):
    """What the CMK's status publishes; never key material."""

    EXAMPLES = (
        {
            "keyId": _EXAMPLE_KEY_ID,
            "namespace": "payments",
            "name": "payments",
            "state": "Enabled",
            "origin": "KMS",
            "keySpec": "SYMMETRIC_DEFAULT",
            "keyUsage": "ENCRYPT_DECRYPT",
            "description": "card data",
            "enabled": True,
            "aliases": ["alias/payments"],
            "default": False,
            "createdAt": "2026-01-05T10:00:00Z",
            "currentVersion": 1,
            "versions": [
                {
                    "version": 1,
                    "createdAt": "2026-01-05T10:00:00Z",
                    "state": "Enabled",
                    "importedAt": None,
                    "expiresAt": None,
                }
            ],
            "rotation": {
                "periodDays": 365,
                "lastRotatedAt": None,
                "nextRotationAt": "2027-01-05T10:00:00Z",
            },
            "deletionDate": None,
        },
    )

    key_id: KeyId
    namespace: Annotated[str, Text()]
    name: Annotated[str, Text()]
    state: Annotated[str, Text(choices=tuple(s.value for s in KeyState))]
    origin: Annotated[str, Text(choices=tuple(o.value for o in Origin))]
    key_spec: Annotated[str, Text(choices=tuple(s.value for s in KeySpec))]
    key_usage: Annotated[str, Text(choices=tuple(u.value for u in KeyUsage))]
    description: Annotated[str, Text()]
    enabled: Annotated[bool, Flag()]
    aliases: tuple[Annotated[str, Text()], ...]
    default: Annotated[bool, Flag("The namespace's default key.")]
    created_at: Time
    current_version: Annotated[int, Integer(1)]
    versions: tuple[KeyVersionMetadata, ...]
    rotation: Rotation
    deletion_date: Time

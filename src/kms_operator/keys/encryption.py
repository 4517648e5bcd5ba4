"""The data-plane verbs: encrypt, decrypt, generate data keys, re-encrypt, random bytes.

They run on the event loop shared by the API and Kopf: they read the index without a lock
and touch no disk once the version keys are loaded (:mod:`.index`). Only Enabled keys are
used; every decryption failure is one :class:`~kms_operator.errors.InvalidCiphertext`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from kms_operator.crypto import blob as blobs
from kms_operator.crypto import primitives
from kms_operator.errors import InvalidCiphertext, InvalidRequest, KeyPendingImport
from kms_operator.store.records import KeyRecord, KeyState, VersionRecord, VersionState

from .base import ServiceBase
from .rules import MAX_PLAINTEXT, check_number_of_bytes, data_key_size, refuse_state

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EncryptResult:
    ciphertext_blob: bytes = field(repr=False)
    key_id: uuid.UUID
    key_version: int


@dataclass(frozen=True, slots=True)
class DecryptResult:
    plaintext: bytes = field(repr=False)
    key_id: uuid.UUID
    key_version: int


@dataclass(frozen=True, slots=True)
class DataKeyResult:
    ciphertext_blob: bytes = field(repr=False)
    plaintext: bytes | None = field(repr=False)
    key_id: uuid.UUID
    key_version: int


@dataclass(frozen=True, slots=True)
class ReEncryptResult:
    ciphertext_blob: bytes = field(repr=False)
    key_id: uuid.UUID
    key_version: int
    source_key_id: uuid.UUID
    source_key_version: int


class EncryptionVerbs(ServiceBase):
    def encrypt(
        self,
        namespace: str,
        reference: str | uuid.UUID,
        plaintext: bytes,
        context: Mapping[str, str] | None = None,
    ) -> EncryptResult:
        if len(plaintext) > MAX_PLAINTEXT:
            raise InvalidRequest(
                f"plaintext is {len(plaintext)} bytes; at most {MAX_PLAINTEXT} are accepted",
                field="plaintext",
            )
        entry = self._entry_in(namespace, reference)
        hit = entry.encrypt_hit
        if hit is None:
            version = self._current_usable_version(entry.record, "encrypt")
            aead = self._index.aead(entry, version)
            prefix = blobs.header_prefix(entry.record.key_id, version)
        else:
            version, prefix, aead = hit
        return EncryptResult(
            blobs.seal_prefixed(aead, prefix, plaintext, context), entry.record.key_id, version
        )

    def decrypt(
        self, ciphertext_blob: bytes, context: Mapping[str, str] | None = None
    ) -> DecryptResult:
        prefix = blobs.header_prefix_of(ciphertext_blob)
        hit = self._index.decrypt_hit(prefix) if prefix is not None else None
        if hit is not None:
            key_id, number, aead = hit
            plaintext = blobs.open_prefixed(aead, ciphertext_blob, context)
            return DecryptResult(plaintext, key_id, number)
        header = blobs.parse_header(ciphertext_blob)
        entry = self._index.entry(header.key_id)
        if entry is None or entry.record.is_detached:
            log.debug("invalid ciphertext: unknown or detached key id %s", header.key_id)
            raise InvalidCiphertext()
        record, version = entry.record, header.version
        self._require_usable(record, "decrypt")
        found = record.version(version)
        if found is None or found.state is VersionState.DESTROYED:
            log.debug("invalid ciphertext: key %s has no version %d", record.key_id, version)
            raise InvalidCiphertext()
        if not self._version_usable(found):
            raise KeyPendingImport(
                f"key {record.namespace}/{record.name} version {version} has no material: "
                "import the same material again to decrypt"
            )
        aead = self._index.aead(entry, version)
        plaintext = blobs.open_sealed(aead, ciphertext_blob, context, header=header)
        return DecryptResult(plaintext, record.key_id, version)

    def generate_data_key(
        self,
        namespace: str,
        reference: str | uuid.UUID,
        *,
        key_spec: str | None = None,
        number_of_bytes: int | None = None,
        context: Mapping[str, str] | None = None,
        with_plaintext: bool = True,
    ) -> DataKeyResult:
        size = data_key_size(key_spec, number_of_bytes)
        plaintext = primitives.random_bytes(size)
        sealed = self.encrypt(namespace, reference, plaintext, context)
        return DataKeyResult(
            sealed.ciphertext_blob,
            plaintext if with_plaintext else None,
            sealed.key_id,
            sealed.key_version,
        )

    def re_encrypt(
        self,
        ciphertext_blob: bytes,
        destination_namespace: str,
        destination_reference: str | uuid.UUID,
        *,
        source_context: Mapping[str, str] | None = None,
        destination_context: Mapping[str, str] | None = None,
    ) -> ReEncryptResult:
        # Resolve the destination first, so a wrong destination costs no decryption; then
        # encrypt under exactly that key (an alias moved meanwhile changes nothing).
        destination = self.resolve(destination_namespace, destination_reference)
        opened = self.decrypt(ciphertext_blob, source_context)
        sealed = self.encrypt(
            destination_namespace, destination.key_id, opened.plaintext, destination_context
        )
        return ReEncryptResult(
            sealed.ciphertext_blob,
            sealed.key_id,
            sealed.key_version,
            opened.key_id,
            opened.key_version,
        )

    @staticmethod
    def random(number_of_bytes: int) -> bytes:
        return primitives.random_bytes(check_number_of_bytes(number_of_bytes))

    def _current_usable_version(self, record: KeyRecord, operation: str) -> int:
        self._require_usable(record, operation)
        current = record.versions[-1]
        if not self._version_usable(current):
            raise KeyPendingImport(
                f"key {record.namespace}/{record.name} material expired: {operation} refused"
            )
        return current.version

    @staticmethod
    def _require_usable(record: KeyRecord, operation: str) -> None:
        if record.state is not KeyState.ENABLED:
            raise refuse_state(record, operation)

    def _version_usable(self, version: VersionRecord) -> bool:
        if version.state is not VersionState.ENABLED:
            return False
        # Material past its validTo is refused at once, even before the timer deletes it.
        return version.expires_at is None or self.clock.now() < version.expires_at

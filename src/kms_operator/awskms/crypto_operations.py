"""Encrypt, Decrypt, ReEncrypt, GenerateDataKey(WithoutPlaintext), GenerateRandom.

The same keys, blobs (DESIGN.md section 4) and RBAC verbs as the native API's crypto routes: a
blob made through one protocol decrypts through the other with the same encryption context.
Decrypt finds the key in the blob's header; a ``KeyId`` the caller adds (the AWS Encryption
SDK always does) must name that key, else ``IncorrectKeyException``.
"""

from __future__ import annotations

import base64

from kms_operator.contract import VERB_DECRYPT, VERB_ENCRYPT, VERB_GENERATE_DATA_KEY
from kms_operator.crypto import blob as blobs
from kms_operator.errors import InvalidRequest, NotFound
from kms_operator.keys.rules import MAX_PLAINTEXT
from kms_operator.store.records import KeyRecord

from .calls import AwsCall, Members, Operation
from .wire import IncorrectKey, InvalidKeyUsage, UnsupportedOperation

SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"
DATA_KEY_SPECS = ("AES_256", "AES_128")
#: Largest blob accepted: a 4096-byte plaintext's blob and then some (AWS allows 6144).
MAX_CIPHERTEXT_BYTES = 6144
MAX_RANDOM_BYTES = 1024


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _algorithm(aws: AwsCall, member: str) -> None:
    algorithm = aws.fields.string(member)
    if algorithm is not None and algorithm != SYMMETRIC_DEFAULT:
        raise InvalidKeyUsage(
            f"{member} {algorithm!r} does not apply to a symmetric key; use {SYMMETRIC_DEFAULT}"
        )


async def _blob_key(aws: AwsCall, blob: bytes, key_member: str) -> tuple[KeyRecord, int]:
    """The key of a blob, once the caller holds ``decrypt`` on it, and the blob's version.

    When the caller names a key in ``key_member`` too, it must be that key (checked after the
    authorization, so only a caller who may decrypt learns whether the name matches).
    """
    record = aws.call.service.key_of_blob(blob)
    version = blobs.parse_header(blob).version
    aws.call.note_key(record, version)
    await aws.call.authorize(VERB_DECRYPT, record)
    if aws.fields.string(key_member) is not None:
        named = aws.name_of(key_member)
        try:
            same = (
                aws.call.service.resolve(named.namespace, named.reference).key_id == record.key_id
            )
        except NotFound:
            same = False
        if not same:
            raise IncorrectKey(f"the ciphertext was not made under the key {key_member} names")
    return record, version


async def encrypt(aws: AwsCall) -> Members:
    aws.fields.refuse_dry_run()
    plaintext = aws.fields.required_blob("Plaintext", max_bytes=MAX_PLAINTEXT)
    context = aws.fields.context("EncryptionContext")
    _algorithm(aws, "EncryptionAlgorithm")
    record = await aws.key(VERB_ENCRYPT)
    result = aws.call.service.encrypt(record.namespace, record.key_id, plaintext, context)
    aws.call.audit.key_version = result.key_version
    return {
        "CiphertextBlob": b64(result.ciphertext_blob),
        "KeyId": aws.arns.key(record),
        "EncryptionAlgorithm": SYMMETRIC_DEFAULT,
    }


async def decrypt(aws: AwsCall) -> Members:
    aws.fields.refuse_dry_run()
    blob = aws.fields.required_blob("CiphertextBlob", max_bytes=MAX_CIPHERTEXT_BYTES)
    context = aws.fields.context("EncryptionContext")
    _algorithm(aws, "EncryptionAlgorithm")
    if aws.fields.context("Recipient") is not None:
        raise UnsupportedOperation("Recipient (Nitro Enclaves attestation) is not supported here")
    record, _ = await _blob_key(aws, blob, "KeyId")
    result = aws.call.service.decrypt(blob, context)
    return {
        "KeyId": aws.arns.key(record),
        "Plaintext": b64(result.plaintext),
        "EncryptionAlgorithm": SYMMETRIC_DEFAULT,
    }


async def re_encrypt(aws: AwsCall) -> Members:
    aws.fields.refuse_dry_run()
    blob = aws.fields.required_blob("CiphertextBlob", max_bytes=MAX_CIPHERTEXT_BYTES)
    source_context = aws.fields.context("SourceEncryptionContext")
    destination_context = aws.fields.context("DestinationEncryptionContext")
    _algorithm(aws, "SourceEncryptionAlgorithm")
    _algorithm(aws, "DestinationEncryptionAlgorithm")
    source, source_version = await _blob_key(aws, blob, "SourceKeyId")
    aws.call.note_source(source, source_version)
    target = await aws.key(VERB_ENCRYPT, "DestinationKeyId")
    result = aws.call.service.re_encrypt(
        blob,
        target.namespace,
        target.key_id,
        source_context=source_context,
        destination_context=destination_context,
    )
    aws.call.audit.key_version = result.key_version
    return {
        "CiphertextBlob": b64(result.ciphertext_blob),
        "SourceKeyId": aws.arns.key(source),
        "KeyId": aws.arns.key(target),
        "SourceEncryptionAlgorithm": SYMMETRIC_DEFAULT,
        "DestinationEncryptionAlgorithm": SYMMETRIC_DEFAULT,
    }


async def _generate_data_key(aws: AwsCall, *, with_plaintext: bool) -> Members:
    aws.fields.refuse_dry_run()
    key_spec = aws.fields.string("KeySpec")
    if key_spec is not None and key_spec not in DATA_KEY_SPECS:
        raise InvalidRequest(
            f"KeySpec {key_spec!r} is not one of {', '.join(DATA_KEY_SPECS)}", field="KeySpec"
        )
    number_of_bytes = aws.fields.integer("NumberOfBytes", 1, MAX_RANDOM_BYTES)
    context = aws.fields.context("EncryptionContext")
    if aws.fields.context("Recipient") is not None:
        raise UnsupportedOperation("Recipient (Nitro Enclaves attestation) is not supported here")
    record = await aws.key(VERB_GENERATE_DATA_KEY)
    result = aws.call.service.generate_data_key(
        record.namespace,
        record.key_id,
        key_spec=key_spec,
        number_of_bytes=number_of_bytes,
        context=context,
        with_plaintext=with_plaintext,
    )
    aws.call.audit.key_version = result.key_version
    members: Members = {
        "CiphertextBlob": b64(result.ciphertext_blob),
        "KeyId": aws.arns.key(record),
    }
    if result.plaintext is not None:
        members["Plaintext"] = b64(result.plaintext)
    return members


async def generate_data_key(aws: AwsCall) -> Members:
    return await _generate_data_key(aws, with_plaintext=True)


async def generate_data_key_without_plaintext(aws: AwsCall) -> Members:
    return await _generate_data_key(aws, with_plaintext=False)


async def generate_random(aws: AwsCall) -> Members:
    aws.fields.refuse_dry_run()
    if aws.fields.string("CustomKeyStoreId") is not None:
        raise UnsupportedOperation("custom key stores are not supported here")
    number_of_bytes = aws.fields.integer("NumberOfBytes", 1, MAX_RANDOM_BYTES)
    if number_of_bytes is None:
        raise InvalidRequest("NumberOfBytes is required", field="NumberOfBytes")
    return {"Plaintext": b64(aws.call.service.random(number_of_bytes))}


OPERATIONS: dict[str, Operation] = {
    "Encrypt": encrypt,
    "Decrypt": decrypt,
    "ReEncrypt": re_encrypt,
    "GenerateDataKey": generate_data_key,
    "GenerateDataKeyWithoutPlaintext": generate_data_key_without_plaintext,
    "GenerateRandom": generate_random,
}

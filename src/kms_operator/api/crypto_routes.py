"""The crypto routes: encrypt, generate-data-key, decrypt, re-encrypt, random.

Each handler: authenticate, parse the body, find the key, authorize the RBAC verb on it, call
one :class:`~kms_operator.keys.service.KeyService` method. Decrypt authorizes against the key
named in the blob's header (an unknown key is ``InvalidCiphertext``); re-encrypt needs
``decrypt`` on the source and ``encrypt`` on the destination; random needs only a valid token.
"""

from __future__ import annotations

from aiohttp import web

from kms_operator.contract import VERB_DECRYPT, VERB_ENCRYPT, VERB_GENERATE_DATA_KEY
from kms_operator.crypto import blob as blobs
from kms_operator.serving.calls import Call, uuid_text

from .calls import key_reference, run
from .models import (
    DecryptRequest,
    DecryptResponse,
    EncryptRequest,
    EncryptResponse,
    GenerateDataKeyRequest,
    GenerateDataKeyResponse,
    RandomRequest,
    RandomResponse,
    ReEncryptRequest,
    ReEncryptResponse,
)

KEY_PREFIX = "/v1/namespaces/{ns}/keys/{key}"
#: An alias without its ``alias/`` prefix, in the path (it may hold ``/``).
ALIAS_PATTERN = "[A-Za-z0-9/_-]+"
ALIAS_PREFIX = f"/v1/namespaces/{{ns}}/aliases/{{alias:{ALIAS_PATTERN}}}"


async def _encrypt(call: Call) -> EncryptResponse:
    await call.authenticate()
    body = EncryptRequest.parse(await call.body())
    namespace, reference = call.request.match_info["ns"], key_reference(call.request)
    record = await call.resolve(VERB_ENCRYPT, namespace, reference)
    # The key authorized is the key used: pass its id, never the reference again.
    result = call.service.encrypt(namespace, record.key_id, body.plaintext, body.encryption_context)
    call.audit.key_version = result.key_version
    return EncryptResponse(result.ciphertext_blob, uuid_text(result.key_id), result.key_version)


async def _generate_data_key(call: Call) -> GenerateDataKeyResponse:
    await call.authenticate()
    body = GenerateDataKeyRequest.parse(await call.body())
    namespace, reference = call.request.match_info["ns"], key_reference(call.request)
    record = await call.resolve(VERB_GENERATE_DATA_KEY, namespace, reference)
    result = call.service.generate_data_key(
        namespace,
        record.key_id,
        key_spec=body.key_spec,
        number_of_bytes=body.number_of_bytes,
        context=body.encryption_context,
        with_plaintext=not body.without_plaintext,
    )
    call.audit.key_version = result.key_version
    return GenerateDataKeyResponse(
        result.ciphertext_blob,
        uuid_text(result.key_id),
        result.key_version,
        result.plaintext,
    )


async def _decrypt(call: Call) -> DecryptResponse:
    await call.authenticate()
    body = DecryptRequest.parse(await call.body())
    record = call.service.key_of_blob(body.ciphertext_blob)
    call.note_key(record, blobs.parse_header(body.ciphertext_blob).version)
    await call.authorize(VERB_DECRYPT, record)
    result = call.service.decrypt(body.ciphertext_blob, body.encryption_context)
    return DecryptResponse(result.plaintext, uuid_text(result.key_id), result.key_version)


async def _re_encrypt(call: Call) -> ReEncryptResponse:
    await call.authenticate()
    body = ReEncryptRequest.parse(await call.body())
    source = call.service.key_of_blob(body.ciphertext_blob)
    call.note_source(source, blobs.parse_header(body.ciphertext_blob).version)
    await call.authorize(VERB_DECRYPT, source)
    destination = body.destination
    target = await call.resolve(VERB_ENCRYPT, destination.namespace, destination.key)
    result = call.service.re_encrypt(
        body.ciphertext_blob,
        destination.namespace,
        target.key_id,
        source_context=body.source_encryption_context,
        destination_context=body.destination_encryption_context,
    )
    call.audit.key_version = result.key_version
    return ReEncryptResponse(
        result.ciphertext_blob,
        uuid_text(result.key_id),
        result.key_version,
        uuid_text(result.source_key_id),
        result.source_key_version,
    )


async def _random(call: Call) -> RandomResponse:
    await call.authenticate()
    body = RandomRequest.parse(await call.body())
    return RandomResponse(call.service.random(body.number_of_bytes))


async def encrypt(request: web.Request) -> web.Response:
    return await run(request, "encrypt", _encrypt)


async def generate_data_key(request: web.Request) -> web.Response:
    return await run(request, "generate-data-key", _generate_data_key)


async def decrypt(request: web.Request) -> web.Response:
    return await run(request, "decrypt", _decrypt)


async def re_encrypt(request: web.Request) -> web.Response:
    return await run(request, "re-encrypt", _re_encrypt)


async def random(request: web.Request) -> web.Response:
    return await run(request, "random", _random)


def add_routes(app: web.Application) -> None:
    for prefix in (KEY_PREFIX, ALIAS_PREFIX):
        app.router.add_post(f"{prefix}/encrypt", encrypt)
        app.router.add_post(f"{prefix}/generate-data-key", generate_data_key)
    app.router.add_post("/v1/decrypt", decrypt)
    app.router.add_post("/v1/re-encrypt", re_encrypt)
    app.router.add_post("/v1/random", random)

"""The data-plane API end to end in-process (:mod:`tests.support.api`): a real KeyService on
SQLite, aiohttp's test client, the static-token authenticator and an authorizer double.

Covers every route's happy path, every error code, the fail-closed audit, audit lines one to
one with calls (without plaintext, blobs or tokens), metrics and the OpenAPI document.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from tests.support.api import ALICE, BOB, NS, OTHER_NS, Api, MemorySink, b64, error, serve, unb64
from tests.support.changes import rotate, set_enabled

from kms_operator import api as native_api
from kms_operator.errors import InvalidCiphertext
from kms_operator.keys.service import KeyService
from kms_operator.kube.reviews import UserInfo
from kms_operator.serving.app import create_app
from kms_operator.serving.auth import ReviewsBusy, StaticTokens
from kms_operator.serving.calls import STATE
from kms_operator.store.records import Origin

pytestmark = pytest.mark.unit


@pytest.fixture
async def api(service: KeyService, tmp_path: Path) -> AsyncIterator[Api]:
    async with serve(service, tmp_path) as served:
        yield served


# -- happy paths ---------------------------------------------------------------------------


async def test_encrypt_then_decrypt_round_trip_with_context(api: Api) -> None:
    api.grants.allow("alice", "encrypt,decrypt", NS)
    status, answer = await api.post(
        f"/v1/namespaces/{NS}/keys/payments/encrypt",
        {"plaintext": b64(b"card 4111"), "encryptionContext": {"order": "42"}},
    )
    assert status == 200
    assert set(answer) == {"ciphertextBlob", "keyId", "keyVersion"}
    assert answer["keyId"] == str(api.key.key_id) and answer["keyVersion"] == 1
    status, opened = await api.post(
        "/v1/decrypt",
        {"ciphertextBlob": answer["ciphertextBlob"], "encryptionContext": {"order": "42"}},
    )
    assert status == 200
    assert unb64(opened["plaintext"]) == b"card 4111"
    assert opened["keyId"] == str(api.key.key_id) and opened["keyVersion"] == 1


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/namespaces/{NS}/keys/payments/encrypt",
        f"/v1/namespaces/{NS}/aliases/payments/encrypt",
        f"/v1/namespaces/{NS}/aliases/team/orders/encrypt",
        "KEY_ID",
    ],
)
async def test_encrypt_by_name_alias_nested_alias_and_key_id(api: Api, path: str) -> None:
    api.grants.allow("alice", "encrypt", NS, "payments")
    if path == "KEY_ID":
        path = f"/v1/namespaces/{NS}/keys/{api.key.key_id}/encrypt"
    status, answer = await api.post(path, {"plaintext": b64(b"x")})
    assert status == 200, answer
    assert answer["keyId"] == str(api.key.key_id)
    # Authorization names the CMK, whatever reference the caller used.
    assert api.grants.asked[-1] == ("alice", "encrypt", NS, "payments")


async def test_empty_plaintext_and_maximum_plaintext(api: Api) -> None:
    api.grants.allow("alice", "encrypt,decrypt", NS)
    for size in (0, 4096):
        blob = await api.encrypt(b"\xff" * size)
        status, opened = await api.post("/v1/decrypt", {"ciphertextBlob": blob})
        assert status == 200 and unb64(opened["plaintext"]) == b"\xff" * size


@pytest.mark.parametrize(
    ("body", "size"),
    [
        ({}, 32),
        ({"keySpec": "AES_256"}, 32),
        ({"keySpec": "AES_128"}, 16),
        ({"numberOfBytes": 1}, 1),
        ({"numberOfBytes": 1024}, 1024),
    ],
)
async def test_generate_data_key_sizes(api: Api, body: dict[str, Any], size: int) -> None:
    api.grants.allow("alice", "generatedatakey,decrypt", NS)
    status, answer = await api.post(f"/v1/namespaces/{NS}/keys/payments/generate-data-key", body)
    assert status == 200, answer
    plaintext = unb64(answer["plaintext"])
    assert len(plaintext) == size
    status, opened = await api.post("/v1/decrypt", {"ciphertextBlob": answer["ciphertextBlob"]})
    assert status == 200 and unb64(opened["plaintext"]) == plaintext


async def test_generate_data_key_without_plaintext_by_alias_with_context(api: Api) -> None:
    api.grants.allow("alice", "generatedatakey,decrypt", NS)
    status, answer = await api.post(
        f"/v1/namespaces/{NS}/aliases/team/orders/generate-data-key",
        {"withoutPlaintext": True, "encryptionContext": {"app": "billing"}},
    )
    assert status == 200
    assert "plaintext" not in answer
    assert answer["keyId"] == str(api.key.key_id)
    status, opened = await api.post(
        "/v1/decrypt",
        {"ciphertextBlob": answer["ciphertextBlob"], "encryptionContext": {"app": "billing"}},
    )
    assert status == 200 and len(unb64(opened["plaintext"])) == 32


async def test_re_encrypt_across_namespaces_and_contexts(api: Api) -> None:
    api.grants.allow("alice", "encrypt,decrypt", NS)
    api.grants.allow("alice", "encrypt,decrypt", OTHER_NS, "archive")
    blob = await api.encrypt(b"move me", {"a": "1"})
    status, answer = await api.post(
        "/v1/re-encrypt",
        {
            "ciphertextBlob": blob,
            "sourceEncryptionContext": {"a": "1"},
            "destination": {"namespace": OTHER_NS, "key": "archive"},
            "destinationEncryptionContext": {"b": "2"},
        },
    )
    assert status == 200, answer
    assert answer["keyId"] == str(api.other.key_id)
    assert answer["sourceKeyId"] == str(api.key.key_id)
    assert ("alice", "decrypt", NS, "payments") in api.grants.asked
    assert ("alice", "encrypt", OTHER_NS, "archive") in api.grants.asked
    status, opened = await api.post(
        "/v1/decrypt", {"ciphertextBlob": answer["ciphertextBlob"], "encryptionContext": {"b": "2"}}
    )
    assert status == 200 and unb64(opened["plaintext"]) == b"move me"


async def test_random_needs_only_authentication(api: Api) -> None:
    status, answer = await api.post("/v1/random", {"numberOfBytes": 48})
    assert status == 200
    assert len(unb64(answer["plaintext"])) == 48
    assert api.grants.asked == []


async def test_describe_key_by_name_and_alias(api: Api) -> None:
    api.grants.allow("alice", "get", NS, "payments")
    rotate(api.service, api.key.key_id)
    for path in (f"/v1/namespaces/{NS}/keys/payments", f"/v1/namespaces/{NS}/aliases/team/orders"):
        status, answer = await api.call("GET", path)
        assert status == 200, answer
        assert answer["keyId"] == str(api.key.key_id)
        assert answer["name"] == "payments" and answer["namespace"] == NS
        assert answer["state"] == "Enabled" and answer["currentVersion"] == 2
        assert [v["version"] for v in answer["versions"]] == [1, 2]
        assert answer["aliases"] == ["alias/payments", "alias/team/orders"]
        assert "fingerprint" not in json.dumps(answer)
    assert api.grants.asked[-1] == ("alice", "get", NS, "payments")


async def test_rotated_key_encrypts_with_new_version_and_decrypts_old(api: Api) -> None:
    api.grants.allow("alice", "encrypt,decrypt", NS)
    old = await api.encrypt(b"v1 data")
    rotate(api.service, api.key.key_id)
    status, answer = await api.post(
        f"/v1/namespaces/{NS}/keys/payments/encrypt", {"plaintext": b64(b"v2 data")}
    )
    assert answer["keyVersion"] == 2
    status, opened = await api.post("/v1/decrypt", {"ciphertextBlob": old})
    assert status == 200 and opened["keyVersion"] == 1


# -- authentication and authorization ------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic YWxpY2U6cHc="}, {"Authorization": "Bearer "},
     {"Authorization": "Bearer not-a-known-token"}],
)  # fmt: skip
async def test_unauthenticated(api: Api, headers: dict[str, str]) -> None:
    api.grants.allow("alice", "encrypt", NS)
    async with api.client.post(
        f"/v1/namespaces/{NS}/keys/payments/encrypt",
        json={"plaintext": b64(b"x")},
        headers=headers,
    ) as response:
        assert response.status == 401
        assert error(await response.json())[0] == "Unauthenticated"
    assert api.audit.records[-1]["outcome"] == "denied"
    assert api.audit.records[-1]["errorCode"] == "Unauthenticated"


async def test_random_without_token_is_401(api: Api) -> None:
    status, answer = await api.post("/v1/random", {"numberOfBytes": 1}, token=None)
    assert status == 401 and error(answer)[0] == "Unauthenticated"


async def test_encrypt_without_the_verb_is_403(api: Api) -> None:
    api.grants.allow("alice", "decrypt,generatedatakey,get", NS)
    status, answer = await api.post(
        f"/v1/namespaces/{NS}/keys/payments/encrypt", {"plaintext": b64(b"x")}
    )
    assert status == 403 and error(answer)[0] == "AccessDenied"


async def test_grant_on_another_key_name_is_403(api: Api) -> None:
    api.grants.allow("alice", "encrypt", NS, "something-else")
    status, answer = await api.post(
        f"/v1/namespaces/{NS}/aliases/payments/encrypt", {"plaintext": b64(b"x")}
    )
    assert status == 403 and error(answer)[0] == "AccessDenied"


async def test_decrypt_authorizes_against_the_blobs_key(api: Api) -> None:
    api.grants.allow("alice", "encrypt,decrypt", NS)
    blob = await api.encrypt(b"x")
    status, answer = await api.post("/v1/decrypt", {"ciphertextBlob": blob}, token=BOB)
    assert status == 403 and error(answer)[0] == "AccessDenied"
    assert api.grants.asked[-1] == ("bob", "decrypt", NS, "payments")


async def test_generate_data_key_needs_its_own_verb(api: Api) -> None:
    api.grants.allow("alice", "encrypt", NS)
    status, answer = await api.post(f"/v1/namespaces/{NS}/keys/payments/generate-data-key", {})
    assert status == 403 and error(answer)[0] == "AccessDenied"


async def test_re_encrypt_needs_decrypt_on_source_and_encrypt_on_destination(api: Api) -> None:
    api.grants.allow("alice", "encrypt", NS)
    blob = await api.encrypt(b"x")
    body = {"ciphertextBlob": blob, "destination": {"namespace": OTHER_NS, "key": "archive"}}
    status, answer = await api.post("/v1/re-encrypt", body)
    assert status == 403, answer  # no decrypt on the source
    api.grants.allow("alice", "decrypt", NS)
    status, answer = await api.post("/v1/re-encrypt", body)
    assert status == 403, answer  # no encrypt on the destination
    assert api.grants.asked[-1] == ("alice", "encrypt", OTHER_NS, "archive")
    api.grants.allow("alice", "encrypt", OTHER_NS)
    status, answer = await api.post("/v1/re-encrypt", body)
    assert status == 200, answer


async def test_describe_key_needs_get(api: Api) -> None:
    api.grants.allow("alice", "encrypt,decrypt,generatedatakey", NS)
    status, answer = await api.call("GET", f"/v1/namespaces/{NS}/keys/payments")
    assert status == 403 and error(answer)[0] == "AccessDenied"


async def test_unknown_key_is_404_for_a_namespace_wide_grant_and_403_otherwise(api: Api) -> None:
    api.grants.allow("alice", "encrypt", NS)
    api.grants.allow("bob", "encrypt", NS, "payments")
    path = f"/v1/namespaces/{NS}/keys/nope/encrypt"
    status, answer = await api.post(path, {"plaintext": b64(b"x")})
    assert status == 404 and error(answer)[0] == "NotFound"
    status, answer = await api.post(path, {"plaintext": b64(b"x")}, token=BOB)
    assert status == 403 and error(answer)[0] == "AccessDenied"
    status, answer = await api.post(
        f"/v1/namespaces/{NS}/aliases/nope/encrypt", {"plaintext": b64(b"x")}
    )
    assert status == 404


async def test_key_of_another_namespace_is_not_found_by_id(api: Api) -> None:
    api.grants.allow("alice", "encrypt", NS)
    status, answer = await api.post(
        f"/v1/namespaces/{NS}/keys/{api.other.key_id}/encrypt", {"plaintext": b64(b"x")}
    )
    assert status == 404 and error(answer)[0] == "NotFound"


# -- key states ----------------------------------------------------------------------------


async def test_disabled_key_is_409_for_every_crypto_route(api: Api) -> None:
    api.grants.allow("alice", "encrypt,decrypt,generatedatakey", NS)
    blob = await api.encrypt(b"x")
    set_enabled(api.service, api.key.key_id, False)
    for path, body in (
        (f"/v1/namespaces/{NS}/keys/payments/encrypt", {"plaintext": b64(b"x")}),
        (f"/v1/namespaces/{NS}/keys/payments/generate-data-key", {}),
        ("/v1/decrypt", {"ciphertextBlob": blob}),
    ):
        status, answer = await api.post(path, body)
        assert status == 409, (path, answer)
        code, message = error(answer)
        assert code == "KeyDisabled" and "Disabled" in message


async def test_pending_deletion_is_409_and_audited(api: Api) -> None:
    api.grants.allow("alice", "encrypt,decrypt", NS)
    blob = await api.encrypt(b"x")
    api.service.schedule_deletion(api.key.key_id, 7)
    status, answer = await api.post("/v1/decrypt", {"ciphertextBlob": blob})
    assert status == 409 and error(answer)[0] == "KeyPendingDeletion"
    line = api.audit.records[-1]
    assert line["operation"] == "decrypt" and line["outcome"] == "error"
    assert line["errorCode"] == "KeyPendingDeletion"
    assert line["keyId"] == str(api.key.key_id) and line["keyName"] == "payments"
    assert line["caller"] == "alice"


async def test_pending_import_is_409(api: Api) -> None:
    api.service.create_key(NS, "byok", origin=Origin.EXTERNAL)
    api.grants.allow("alice", "encrypt", NS)
    status, answer = await api.post(
        f"/v1/namespaces/{NS}/keys/byok/encrypt", {"plaintext": b64(b"x")}
    )
    assert status == 409 and error(answer)[0] == "KeyPendingImport"


# -- invalid ciphertext: one code, one message ---------------------------------------------


async def test_every_decrypt_failure_is_the_same_invalid_ciphertext(api: Api) -> None:
    api.grants.allow("alice", "encrypt,decrypt", NS)
    blob = unb64(await api.encrypt(b"secret", {"k": "v"}))
    flipped = bytearray(blob)
    flipped[-1] ^= 1
    unknown_key = blob[:4] + bytes(16) + blob[20:]
    header_flip = bytearray(blob)
    header_flip[22] ^= 1  # version
    cases = [
        {"ciphertextBlob": b64(bytes(flipped)), "encryptionContext": {"k": "v"}},
        {"ciphertextBlob": b64(blob), "encryptionContext": {"k": "other"}},
        {"ciphertextBlob": b64(blob)},
        {"ciphertextBlob": b64(blob[:40]), "encryptionContext": {"k": "v"}},
        {"ciphertextBlob": b64(unknown_key), "encryptionContext": {"k": "v"}},
        {"ciphertextBlob": b64(bytes(header_flip)), "encryptionContext": {"k": "v"}},
        {"ciphertextBlob": b64(b"not a blob at all, but long enough to have a header....")},
    ]
    for body in cases:
        status, answer = await api.post("/v1/decrypt", body)
        assert status == 400, answer
        assert error(answer) == ("InvalidCiphertext", InvalidCiphertext.MESSAGE)
        assert "secret" not in json.dumps(answer)


async def test_re_encrypt_of_a_tampered_blob_is_invalid_ciphertext(api: Api) -> None:
    api.grants.allow("alice", "encrypt,decrypt", NS)
    blob = bytearray(unb64(await api.encrypt(b"x")))
    blob[40] ^= 0x80
    status, answer = await api.post(
        "/v1/re-encrypt",
        {"ciphertextBlob": b64(bytes(blob)), "destination": {"namespace": NS, "key": "payments"}},
    )
    assert status == 400 and error(answer) == ("InvalidCiphertext", InvalidCiphertext.MESSAGE)


# -- invalid requests name the field -------------------------------------------------------

ENCRYPT = f"/v1/namespaces/{NS}/keys/payments/encrypt"
GDK = f"/v1/namespaces/{NS}/keys/payments/generate-data-key"


@pytest.mark.parametrize(
    ("path", "raw", "field_name"),
    [
        (ENCRYPT, b"{not json", "body"),
        (ENCRYPT, b"\xff\xfe", "body"),
        (ENCRYPT, b"[1, 2]", "body"),
        (ENCRYPT, b"{}", "plaintext"),
        (ENCRYPT, b'{"plaintext": 5}', "plaintext"),
        (ENCRYPT, b'{"plaintext": "***"}', "plaintext"),
        (ENCRYPT, b'{"plaintext": "YQ"}', "plaintext"),
        (ENCRYPT, b'{"plaintext": "YWJj", "extra": 1}', "extra"),
        (ENCRYPT, b'{"plaintext": "YWJj", "encryptionContext": []}', "encryptionContext"),
        (ENCRYPT, b'{"plaintext": "YWJj", "encryptionContext": {"t": 1}}', "encryptionContext.t"),
        (ENCRYPT, json.dumps({"plaintext": b64(bytes(4097))}).encode(), "plaintext"),
        (GDK, b'{"keySpec": "AES_512"}', "keySpec"),
        (GDK, b'{"numberOfBytes": 0}', "numberOfBytes"),
        (GDK, b'{"numberOfBytes": 1025}', "numberOfBytes"),
        (GDK, b'{"numberOfBytes": true}', "numberOfBytes"),
        (GDK, b'{"numberOfBytes": 16, "keySpec": "AES_128"}', "numberOfBytes"),
        (GDK, b'{"withoutPlaintext": "yes"}', "withoutPlaintext"),
        ("/v1/decrypt", b"{}", "ciphertextBlob"),
        ("/v1/decrypt", b'{"ciphertextBlob": "a-b_"}', "ciphertextBlob"),
        ("/v1/decrypt", b'{"ciphertextBlob": "YWJj", "context": {}}', "context"),
        ("/v1/re-encrypt", b'{"ciphertextBlob": "YWJj"}', "destination"),
        ("/v1/re-encrypt", b'{"ciphertextBlob": "YWJj", "destination": "x"}', "destination"),
        (
            "/v1/re-encrypt",
            b'{"ciphertextBlob": "YWJj", "destination": {"namespace": "a"}}',
            "destination.key",
        ),
        (
            "/v1/re-encrypt",
            b'{"ciphertextBlob": "YWJj", "destination": {"namespace": "a", "key": "b", "x": 1}}',
            "destination.x",
        ),
        ("/v1/random", b"{}", "numberOfBytes"),
        ("/v1/random", b'{"numberOfBytes": 2000}', "numberOfBytes"),
        ("/v1/random", b'{"numberOfBytes": "8"}', "numberOfBytes"),
    ],
)
async def test_invalid_request_names_the_field(
    api: Api, path: str, raw: bytes, field_name: str
) -> None:
    api.grants.allow("alice", "encrypt,decrypt,generatedatakey", NS)
    status, answer = await api.post(path, raw=raw)
    assert status == 400, answer
    code, message = error(answer)
    assert code == "InvalidRequest"
    assert field_name in message


async def test_oversized_body_is_invalid_request(api: Api) -> None:
    api.grants.allow("alice", "encrypt", NS)
    status, answer = await api.post(ENCRYPT, raw=b'{"plaintext": "' + b"A" * 70_000 + b'"}')
    assert status == 400
    assert error(answer)[0] == "InvalidRequest" and "body" in error(answer)[1]


async def test_unknown_route_and_wrong_method_answer_in_the_error_format(api: Api) -> None:
    status, answer = await api.call("GET", "/v1/nothing-here")
    assert status == 404 and error(answer)[0] == "NotFound"
    status, answer = await api.call("GET", "/v1/decrypt")
    assert status == 405 and error(answer)[0] == "InvalidRequest"


# -- internal errors ----------------------------------------------------------------------


async def test_unexpected_exception_is_a_generic_500(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    api.grants.allow("alice", "encrypt", NS)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("detail-that-must-stay-in-the-log")

    monkeypatch.setattr(api.service, "encrypt", boom)
    status, answer = await api.post(ENCRYPT, {"plaintext": b64(b"x")})
    assert status == 500
    code, message = error(answer)
    assert code == "InternalError" and "detail-that" not in message
    assert "detail-that-must-stay-in-the-log" in caplog.text
    assert api.audit.records[-1]["outcome"] == "error"
    assert api.audit.records[-1]["errorCode"] == "InternalError"


# -- audit ---------------------------------------------------------------------------------


async def test_audit_failure_refuses_the_call_and_returns_no_result(api: Api) -> None:
    api.grants.allow("alice", "encrypt,decrypt,generatedatakey", NS)
    blob = await api.encrypt(b"top secret plaintext")
    api.audit.fail = True
    for path, body in (
        ("/v1/decrypt", {"ciphertextBlob": blob}),
        (ENCRYPT, {"plaintext": b64(b"top secret plaintext")}),
        (GDK, {}),
        ("/v1/random", {"numberOfBytes": 32}),
    ):
        async with api.client.post(
            path, json=body, headers={"Authorization": f"Bearer {ALICE}"}
        ) as response:
            text = await response.text()
            assert response.status == 500, text
        answer = json.loads(text)
        assert error(answer)[0] == "InternalError"
        assert "audit" in error(answer)[1]
        assert b64(b"top secret plaintext") not in text and "top secret" not in text
        assert "ciphertextBlob" not in text and 'plaintext"' not in text


async def test_audit_lines_match_calls_one_to_one_and_hold_no_secrets(api: Api) -> None:
    api.grants.allow("alice", "encrypt,decrypt,generatedatakey,get", NS)
    api.grants.allow("alice", "encrypt", OTHER_NS)
    plaintext = b"audit-me-not 0123456789"
    secrets: list[str] = [ALICE, BOB, b64(plaintext)]
    ops: list[tuple[str, str]] = []

    blob = await api.encrypt(plaintext, {"tenant": "acme-context-value"})
    secrets.append(blob)
    ops.append(("encrypt", "allowed"))
    status, answer = await api.post(
        "/v1/decrypt",
        {"ciphertextBlob": blob, "encryptionContext": {"tenant": "acme-context-value"}},
    )
    assert status == 200
    ops.append(("decrypt", "allowed"))
    status, answer = await api.post(GDK, {})
    secrets += [answer["plaintext"], answer["ciphertextBlob"]]
    ops.append(("generate-data-key", "allowed"))
    status, answer = await api.post(
        "/v1/re-encrypt",
        {
            "ciphertextBlob": blob,
            "sourceEncryptionContext": {"tenant": "acme-context-value"},
            "destination": {"namespace": OTHER_NS, "key": "archive"},
        },
    )
    assert status == 200, answer
    secrets.append(answer["ciphertextBlob"])
    ops.append(("re-encrypt", "allowed"))
    status, answer = await api.post("/v1/random", {"numberOfBytes": 16})
    secrets.append(answer["plaintext"])
    ops.append(("random", "allowed"))
    await api.call("GET", f"/v1/namespaces/{NS}/keys/payments")
    ops.append(("describe-key", "allowed"))
    await api.post("/v1/decrypt", {"ciphertextBlob": blob}, token=BOB)
    ops.append(("decrypt", "denied"))
    await api.post("/v1/decrypt", {"ciphertextBlob": blob}, token=None)
    ops.append(("decrypt", "denied"))
    await api.post("/v1/decrypt", {"ciphertextBlob": blob})
    ops.append(("decrypt", "error"))
    await api.post(ENCRYPT, raw=b"{")
    ops.append(("encrypt", "error"))
    await api.call("GET", "/healthz")  # not an API operation: not audited

    records = api.audit.records
    assert [(r["operation"], r["outcome"]) for r in records] == ops
    text = "\n".join(api.audit.lines)
    for secret in secrets:
        assert secret not in text
    assert "acme-context-value" not in text
    for record in records:
        assert set(record) >= {
            "time", "caller", "operation", "namespace", "keyName", "keyId", "keyVersion",
            "outcome", "errorCode", "remoteAddress", "requestId",
        }  # fmt: skip
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    assert records[0]["keyId"] == str(api.key.key_id) and records[0]["keyVersion"] == 1
    assert records[0]["caller"] == "alice" and records[0]["namespace"] == NS
    assert records[3]["keyId"] == str(api.other.key_id)
    assert records[3]["source"]["keyId"] == str(api.key.key_id)
    assert records[6]["caller"] == "bob" and records[6]["errorCode"] == "AccessDenied"
    assert records[7]["caller"] is None and records[7]["errorCode"] == "Unauthenticated"
    assert records[8]["errorCode"] == "InvalidCiphertext"
    assert records[9]["errorCode"] == "InvalidRequest"


# -- health, readiness, metrics, OpenAPI ---------------------------------------------------


async def test_healthz_always_and_readyz_only_once_ready(api: Api) -> None:
    status, answer = await api.call("GET", "/healthz", token=None)
    assert status == 200
    status, answer = await api.call("GET", "/readyz", token=None)
    assert status == 503
    api.client.server.app[STATE].ready = True
    status, answer = await api.call("GET", "/readyz", token=None)
    assert status == 200 and answer == {"status": "ready"}


async def test_metrics_count_calls_time_them_and_count_keys_by_state(api: Api) -> None:
    api.grants.allow("alice", "encrypt", NS)
    await api.encrypt(b"x")
    await api.encrypt(b"y")
    await api.post(ENCRYPT, {"plaintext": b64(b"x")}, token=BOB)
    set_enabled(api.service, api.other.key_id, False)
    async with api.client.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    assert 'kms_api_requests_total{operation="encrypt",outcome="allowed"} 2.0' in text
    assert 'kms_api_requests_total{operation="encrypt",outcome="denied"} 1.0' in text
    assert 'kms_api_request_duration_seconds_count{operation="encrypt"} 3.0' in text
    assert 'kms_keys{state="Enabled"} 1.0' in text
    assert 'kms_keys{state="Disabled"} 1.0' in text
    assert 'kms_keys{state="PendingDeletion"} 0.0' in text


async def test_openapi_describes_every_route_and_only_those(api: Api) -> None:
    status, doc = await api.call("GET", "/openapi.json", token=None)
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    served: set[tuple[str, str]] = set()
    for route in api.client.server.app.router.routes():
        if route.name == "no-route":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)
        served.add((route.method.lower(), path))
    documented = {
        (method, path)
        for path, item in doc["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert served == documented
    for path, item in doc["paths"].items():
        for operation in item.values():
            assert "200" in operation["responses"], path
            if path.startswith("/v1/"):
                assert "401" in operation["responses"], path
    schemas = doc["components"]["schemas"]
    for name in ("EncryptRequest", "DecryptRequest", "ReEncryptRequest", "Error", "KeyMetadata"):
        assert name in schemas
    codes = set(schemas["Error"]["properties"]["error"]["properties"]["code"]["enum"])
    assert codes >= {
        "InvalidRequest", "InvalidCiphertext", "Unauthenticated", "AccessDenied", "NotFound",
        "KeyDisabled", "KeyPendingImport", "KeyPendingDeletion", "InternalError",
    }  # fmt: skip


# -- security review (issue 8): nesting, refusal texts, bounded audit fields, overload ----


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 60000,
        b'{"plaintext": ' + b"[" * 60000,
        b'{"plaintext": "YQ==", "encryptionContext": ' + b'{"a": ' * 17 + b"1" + b"}" * 18,
        b"[" * 17 + b"]" * 17,
    ],
)
async def test_deeply_nested_json_is_invalid_request_without_a_traceback(
    api: Api, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    api.grants.allow("alice", "encrypt", NS)
    caplog.set_level("DEBUG")
    status, answer = await api.post(ENCRYPT, raw=raw)
    assert status == 400, answer
    code, message = error(answer)
    assert code == "InvalidRequest" and "body" in message
    assert not [r for r in caplog.records if r.exc_info or r.levelname in ("ERROR", "CRITICAL")]
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text
    assert api.audit.records[-1]["errorCode"] == "InvalidRequest"


async def test_nesting_within_the_bound_and_brackets_in_strings_still_parse(api: Api) -> None:
    api.grants.allow("alice", "encrypt", NS)
    context = {f"k{n}": "[[[[{{{{" * 8 + '"]' for n in range(10)}
    status, answer = await api.post(ENCRYPT, {"plaintext": b64(b"x"), "encryptionContext": context})
    assert status == 200, answer


async def test_decrypt_refusal_names_the_key_id_only(api: Api) -> None:
    api.grants.allow("alice", "encrypt,decrypt", NS)
    blob = await api.encrypt(b"x")
    for path, body in (
        ("/v1/decrypt", {"ciphertextBlob": blob}),
        ("/v1/re-encrypt", {"ciphertextBlob": blob,
                            "destination": {"namespace": OTHER_NS, "key": "archive"}}),
    ):  # fmt: skip
        status, answer = await api.post(path, body, token=BOB)
        assert status == 403, answer
        code, message = error(answer)
        assert code == "AccessDenied" and str(api.key.key_id) in message
        assert "payments" not in message and NS not in message, message
        assert "decrypt" in message
        # The audit line, for the KMS's operators, still names the key fully.
        line = api.audit.records[-1]
        assert line["outcome"] == "denied"
        names = line.get("source") or line
        assert names["keyName"] == "payments" and names["namespace"] == NS


async def test_audit_fields_are_bounded_with_and_without_a_token(api: Api) -> None:
    api.grants.allow("alice", "encrypt", NS)
    huge = "n" * 8000
    path = f"/v1/namespaces/{huge}/keys/payments/encrypt"
    status, answer = await api.post(path, {"plaintext": b64(b"x")}, token=None)
    assert status == 401, answer
    status, answer = await api.post(path, {"plaintext": b64(b"x")})
    assert status == 400 and error(answer)[0] == "InvalidRequest", answer
    status, answer = await api.post(
        f"/v1/namespaces/{NS}/keys/{'k' * 8000}/encrypt", {"plaintext": b64(b"x")}
    )
    assert status == 400 and error(answer)[0] == "InvalidRequest", answer
    assert api.grants.asked == []  # no review for a name that cannot exist
    for line, record in zip(api.audit.lines[-3:], api.audit.records[-3:], strict=True):
        assert len(line) < 1024, len(line)
        for value in record.values():
            if isinstance(value, str):
                assert len(value) <= 253 + len("...[truncated]")
    assert api.audit.records[-3]["namespace"].endswith("...[truncated]")
    assert api.audit.records[-1]["keyName"].endswith("...[truncated]")


async def test_an_overloaded_review_pool_is_503_with_retry_after(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def busy(token: str) -> UserInfo:
        raise ReviewsBusy("too many callers are being checked at once; retry in a moment")

    monkeypatch.setattr(api.client.server.app[STATE].authenticator, "authenticate", busy)
    async with api.client.post(
        ENCRYPT, json={"plaintext": b64(b"x")}, headers={"Authorization": f"Bearer {ALICE}"}
    ) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert error(await response.json())[0] == "ServiceUnavailable"
    assert api.audit.records[-1]["errorCode"] == "ServiceUnavailable"


async def test_readyz_lists_the_problems_of_readiness_checks(service: KeyService) -> None:
    problems: dict[str, str | None] = {"scheduler": None}

    def broken() -> str | None:
        raise RuntimeError("secret detail")

    app = create_app(
        service,
        front_ends=(native_api.add_routes,),
        authenticator=StaticTokens({}),
        authorizer=StaticTokens({}),
        audit=MemorySink(),
        readiness_checks=[lambda: problems["scheduler"]],
    )
    app[STATE].ready = True
    async with TestClient(TestServer(app)) as client:
        async with client.get("/readyz") as response:
            assert response.status == 200 and await response.json() == {"status": "ready"}
        problems["scheduler"] = "deadline scheduler: store unavailable (retrying)"
        async with client.get("/readyz") as response:
            assert response.status == 503
            assert await response.json() == {
                "status": "not ready",
                "problems": ["deadline scheduler: store unavailable (retrying)"],
            }
    app2 = create_app(
        service,
        front_ends=(native_api.add_routes,),
        authenticator=StaticTokens({}),
        authorizer=StaticTokens({}),
        audit=MemorySink(),
        readiness_checks=[broken],
    )
    app2[STATE].ready = True
    async with TestClient(TestServer(app2)) as client, client.get("/readyz") as response:
        assert response.status == 503
        text = await response.text()
    assert "RuntimeError" in text and "secret detail" not in text

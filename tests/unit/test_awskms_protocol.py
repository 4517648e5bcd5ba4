"""The AWS protocol through boto3 itself, in-process: every crypto and read operation, the
identifier forms, the exception classes the SDK raises, the wire details and the audit trail.

The server is the listener's real application with both front ends on a local port; only the
authorizer is a double (RBAC against a real API server is the integration tests' part).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import ClientError
from tests.support.awsapi import (
    ACCOUNT,
    ALICE,
    ALICE_TOKEN,
    BOB_TOKEN,
    DEV,
    DEV_TOKEN,
    NS,
    OTHER_NS,
    AwsApi,
    serve,
)

from kms_operator.awskms.identifiers import Arns
from kms_operator.keys.service import KeyService
from kms_operator.store.records import Origin

pytestmark = pytest.mark.unit

CRYPTO = "encrypt,decrypt,generatedatakey,get,list"


@pytest.fixture
async def api(service: KeyService, tmp_path: Path) -> Any:
    async with serve(service, tmp_path) as served:
        served.grants.allow(ALICE, CRYPTO, NS)
        yield served


def code_of(error: ClientError) -> str:
    return str(error.response["Error"]["Code"])


async def raw(
    api: AwsApi, target: str | None, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, str, dict[str, Any]]:
    sent = {"Content-Type": "application/x-amz-json-1.1", **(headers or {})}
    if target is not None:
        sent["X-Amz-Target"] = target
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{api.url}/", data=data, headers=sent) as response,
    ):
        return response.status, response.content_type, await response.json(content_type=None)


async def test_encrypt_and_decrypt_under_every_identifier_form(api: AwsApi) -> None:
    kms = api.kms()
    arn = f"arn:aws:kms:{NS}:{ACCOUNT}:key/{api.key.key_id}"
    identifiers = [
        str(api.key.key_id),
        arn,
        "alias/payments",
        f"arn:aws:kms:{NS}:{ACCOUNT}:alias/team/orders",
    ]
    for identifier in identifiers:
        sealed = await api.run(
            kms.encrypt, KeyId=identifier, Plaintext=b"secret", EncryptionContext={"app": "x"}
        )
        assert sealed["KeyId"] == arn and sealed["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
        assert sealed["CiphertextBlob"].startswith(b"KMS1" + api.key.key_id.bytes)
        opened = await api.run(
            kms.decrypt, CiphertextBlob=sealed["CiphertextBlob"], EncryptionContext={"app": "x"}
        )
        assert opened["Plaintext"] == b"secret" and opened["KeyId"] == arn
        with pytest.raises(kms.exceptions.InvalidCiphertextException):
            await api.run(kms.decrypt, CiphertextBlob=sealed["CiphertextBlob"])


async def test_a_blob_of_one_protocol_decrypts_through_the_other(api: AwsApi) -> None:
    kms = api.kms()
    headers = {"Authorization": f"Bearer {ALICE_TOKEN}"}
    context = {"tenant": "t1"}
    async with aiohttp.ClientSession(headers=headers) as session:
        native = f"{api.url}/v1/namespaces/{NS}/keys/payments/encrypt"
        body = {
            "plaintext": base64.b64encode(b"from native").decode(),
            "encryptionContext": context,
        }
        async with session.post(native, json=body) as response:
            assert response.status == 200
            native_blob = base64.b64decode((await response.json())["ciphertextBlob"])
        opened = await api.run(kms.decrypt, CiphertextBlob=native_blob, EncryptionContext=context)
        assert opened["Plaintext"] == b"from native"

        sealed = await api.run(
            kms.encrypt, KeyId="alias/payments", Plaintext=b"from aws", EncryptionContext=context
        )
        body = {
            "ciphertextBlob": base64.b64encode(sealed["CiphertextBlob"]).decode(),
            "encryptionContext": context,
        }
        async with session.post(f"{api.url}/v1/decrypt", json=body) as response:
            assert response.status == 200
            assert base64.b64decode((await response.json())["plaintext"]) == b"from aws"


async def test_decrypt_checks_a_key_id_the_caller_names(api: AwsApi) -> None:
    kms = api.kms()
    blob = (await api.run(kms.encrypt, KeyId="alias/payments", Plaintext=b"p"))["CiphertextBlob"]
    for same in (str(api.key.key_id), "alias/team/orders", api.arns.key(api.key)):
        opened = await api.run(kms.decrypt, CiphertextBlob=blob, KeyId=same)
        assert opened["Plaintext"] == b"p"
    other = api.service.create_key(NS, "other")
    for wrong in (str(other.key_id), "alias/nothing-here"):
        with pytest.raises(kms.exceptions.IncorrectKeyException):
            await api.run(kms.decrypt, CiphertextBlob=blob, KeyId=wrong)


async def test_generate_data_key_with_and_without_plaintext(api: AwsApi) -> None:
    kms = api.kms()
    made = await api.run(kms.generate_data_key, KeyId="alias/payments", KeySpec="AES_256")
    assert len(made["Plaintext"]) == 32 and made["KeyId"] == api.arns.key(api.key)
    opened = await api.run(kms.decrypt, CiphertextBlob=made["CiphertextBlob"])
    assert opened["Plaintext"] == made["Plaintext"]
    short = await api.run(kms.generate_data_key, KeyId="alias/payments", NumberOfBytes=7)
    assert len(short["Plaintext"]) == 7
    blind = await api.run(
        kms.generate_data_key_without_plaintext,
        KeyId="alias/payments",
        KeySpec="AES_128",
        EncryptionContext={"a": "b"},
    )
    assert "Plaintext" not in blind
    opened = await api.run(
        kms.decrypt, CiphertextBlob=blind["CiphertextBlob"], EncryptionContext={"a": "b"}
    )
    assert len(opened["Plaintext"]) == 16
    with pytest.raises(ClientError) as refused:
        await api.run(
            kms.generate_data_key, KeyId="alias/payments", KeySpec="AES_256", NumberOfBytes=32
        )
    assert code_of(refused.value) == "ValidationException"


async def test_generate_random_bounds(api: AwsApi) -> None:
    kms = api.kms()
    assert len((await api.run(kms.generate_random, NumberOfBytes=1024))["Plaintext"]) == 1024
    token = {"X-Amz-Security-Token": ALICE_TOKEN}
    for size in (0, 1025, "8", True):  # boto3 refuses these itself: sent raw
        status, _, answer = await raw(
            api, "TrentService.GenerateRandom", {"NumberOfBytes": size}, token
        )
        assert status == 400 and answer["__type"] == "ValidationException", answer
        assert "NumberOfBytes" in answer["message"]


async def test_re_encrypt_needs_decrypt_on_the_source_and_encrypt_on_the_destination(
    api: AwsApi,
) -> None:
    kms = api.kms()
    target = api.service.create_key(NS, "target")
    blob = (await api.run(kms.encrypt, KeyId="alias/payments", Plaintext=b"m"))["CiphertextBlob"]
    api.grants.asked.clear()
    moved = await api.run(
        kms.re_encrypt,
        CiphertextBlob=blob,
        DestinationKeyId=str(target.key_id),
        DestinationEncryptionContext={"to": "target"},
    )
    assert moved["SourceKeyId"] == api.arns.key(api.key)
    assert moved["KeyId"] == api.arns.key(target)
    assert api.grants.asked == [
        (ALICE, "decrypt", NS, "payments"),
        (ALICE, "encrypt", NS, "target"),
    ]
    opened = await api.run(
        kms.decrypt, CiphertextBlob=moved["CiphertextBlob"], EncryptionContext={"to": "target"}
    )
    assert opened["Plaintext"] == b"m"
    record = api.audit.records[-2]
    assert record["operation"] == "aws:ReEncrypt" and record["keyName"] == "target"
    assert record["source"]["keyName"] == "payments"


async def test_describe_key_answers_aws_key_metadata(api: AwsApi) -> None:
    kms = api.kms()
    metadata = (await api.run(kms.describe_key, KeyId="alias/payments"))["KeyMetadata"]
    assert metadata["KeyId"] == str(api.key.key_id)
    assert metadata["Arn"] == api.arns.key(api.key)
    assert metadata["AWSAccountId"] == ACCOUNT
    assert metadata["KeyState"] == "Enabled" and metadata["Enabled"] is True
    assert metadata["Origin"] == "AWS_KMS" and metadata["KeyManager"] == "CUSTOMER"
    assert metadata["KeySpec"] == "SYMMETRIC_DEFAULT" and metadata["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert metadata["CreationDate"].timestamp() == api.key.created_at.timestamp()

    external = api.service.create_key(NS, "imported", origin=Origin.EXTERNAL)
    metadata = (await api.run(kms.describe_key, KeyId=str(external.key_id)))["KeyMetadata"]
    assert metadata["Origin"] == "EXTERNAL" and metadata["KeyState"] == "PendingImport"
    assert metadata["Enabled"] is False
    assert metadata["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE"

    default = api.service.create_key(
        NS, "default-datakeys", aliases=("alias/kms/datakeys",), default_service="datakeys"
    )
    metadata = (await api.run(kms.describe_key, KeyId="alias/kms/datakeys"))["KeyMetadata"]
    assert metadata["KeyManager"] == "AWS" and metadata["KeyId"] == str(default.key_id)


async def test_refusals_raise_the_sdk_exception_classes(api: AwsApi) -> None:
    kms = api.kms()
    with pytest.raises(kms.exceptions.NotFoundException):
        await api.run(kms.encrypt, KeyId="alias/missing", Plaintext=b"x")
    with pytest.raises(kms.exceptions.NotFoundException):
        await api.run(kms.encrypt, KeyId="payments", Plaintext=b"x")  # a name is no AWS id
    with pytest.raises(kms.exceptions.NotFoundException):
        await api.run(kms.describe_key, KeyId=f"arn:aws:kms:{NS}:999999999999:key/{api.key.key_id}")
    disabled = api.service.create_key(NS, "off", enabled=False)
    with pytest.raises(kms.exceptions.DisabledException):
        await api.run(kms.encrypt, KeyId=str(disabled.key_id), Plaintext=b"x")
    leaving = api.service.create_key(NS, "leaving")
    api.service.schedule_deletion(leaving.key_id, 7)
    with pytest.raises(kms.exceptions.KMSInvalidStateException):
        await api.run(kms.encrypt, KeyId=str(leaving.key_id), Plaintext=b"x")
    metadata = (await api.run(kms.describe_key, KeyId=str(leaving.key_id)))["KeyMetadata"]
    assert metadata["KeyState"] == "PendingDeletion" and "DeletionDate" in metadata
    with pytest.raises(kms.exceptions.InvalidKeyUsageException):
        await api.run(
            kms.encrypt,
            KeyId="alias/payments",
            Plaintext=b"x",
            EncryptionAlgorithm="RSAES_OAEP_SHA_256",
        )
    with pytest.raises(kms.exceptions.UnsupportedOperationException) as unsupported:
        await api.run(
            kms.create_grant,
            KeyId=str(api.key.key_id),
            GranteePrincipal="someone",
            Operations=["Encrypt"],
        )
    assert "CreateGrant" in str(unsupported.value)


async def test_access_is_checked_on_the_key_and_refusals_are_audited(api: AwsApi) -> None:
    kms = api.kms()
    other_arn = api.arns.key(api.other)
    with pytest.raises(ClientError) as refused:
        await api.run(kms.encrypt, KeyId=other_arn, Plaintext=b"x")
    assert code_of(refused.value) == "AccessDeniedException"
    record = api.audit.records[-1]
    assert record["outcome"] == "denied" and record["namespace"] == OTHER_NS
    # Bob's namespace is team-b: his bare alias names team-b's keys, where he has no grant.
    with pytest.raises(ClientError) as refused:
        await api.run(api.kms(BOB_TOKEN).encrypt, KeyId="alias/payments", Plaintext=b"x")
    assert code_of(refused.value) == "AccessDeniedException"
    assert api.grants.asked[-1] == (
        "system:serviceaccount:team-b:bob",
        "encrypt",
        OTHER_NS,
        "alias/payments",
    )


async def test_tokens_travel_as_the_session_token_or_a_bearer_header(api: AwsApi) -> None:
    for token in (None, "not-a-token"):
        with pytest.raises(ClientError) as refused:
            await api.run(api.kms(token).list_keys)
        assert code_of(refused.value) == "UnrecognizedClientException"
    status, content_type, body = await raw(
        api,
        "TrentService.GenerateRandom",
        {"NumberOfBytes": 8},
        {"Authorization": f"Bearer {ALICE_TOKEN}"},
    )
    assert status == 200 and content_type == "application/x-amz-json-1.1"
    assert len(base64.b64decode(body["Plaintext"])) == 8


async def test_wire_errors_are_typed_json_with_aws_shapes(api: AwsApi) -> None:
    token = {"X-Amz-Security-Token": ALICE_TOKEN}
    cases = [
        ("TrentService.Encrypt", b"{not json", "ValidationException", "JSON"),
        (
            "TrentService.Encrypt",
            {"KeyId": "alias/payments", "Plaintext": "%%"},
            "ValidationException",
            "Plaintext",
        ),
        ("TrentService.Encrypt", {"Plaintext": "AA=="}, "ValidationException", "KeyId"),
        (
            "TrentService.Encrypt",
            {"KeyId": "alias/payments", "Plaintext": "AA==", "EncryptionContext": {"a": 1}},
            "ValidationException",
            "EncryptionContext",
        ),
        ("TrentService.Frobnicate", {}, "UnsupportedOperationException", "Frobnicate"),
        ("Other.Encrypt", {}, "UnsupportedOperationException", "TrentService"),
        (None, {}, "UnsupportedOperationException", "TrentService"),
    ]
    for target, body, shape, named in cases:
        status, content_type, answer = await raw(api, target, body, token)
        assert (status, content_type) == (400, "application/x-amz-json-1.1"), answer
        assert answer["__type"] == shape and named in answer["message"], answer
        assert set(answer) == {"__type", "message"}
    assert {r["operation"] for r in api.audit.records} == {"aws:Encrypt", "aws:Unsupported"}


async def test_a_caller_that_is_not_a_service_account_names_keys_by_arn(api: AwsApi) -> None:
    api.grants.allow(DEV, "get,list", NS)
    kms = api.kms(DEV_TOKEN)
    for call, kwargs in ((kms.list_keys, {}), (kms.describe_key, {"KeyId": "alias/payments"})):
        with pytest.raises(ClientError) as refused:
            await api.run(call, **kwargs)
        assert code_of(refused.value) == "ValidationException"
        assert "ARN" in str(refused.value) and "namespace" in str(refused.value)
    alias_arn = api.arns.alias(NS, "alias/payments")
    metadata = (await api.run(kms.describe_key, KeyId=alias_arn))["KeyMetadata"]
    assert metadata["KeyId"] == str(api.key.key_id)


async def test_list_keys_and_aliases_page_with_limit_and_marker(api: AwsApi) -> None:
    kms = api.kms()
    for number in range(5):
        api.service.create_key(NS, f"k{number}", aliases=(f"alias/k{number}",))
    expected = sorted(str(r.key_id) for r in api.service.keys() if r.namespace == NS)
    seen: list[str] = []
    kwargs: dict[str, Any] = {"Limit": 2}
    while True:
        page = await api.run(kms.list_keys, **kwargs)
        seen += [key["KeyId"] for key in page["Keys"]]
        assert all(key["KeyArn"].endswith(key["KeyId"]) for key in page["Keys"])
        if not page["Truncated"]:
            break
        kwargs["Marker"] = page["NextMarker"]
    assert seen == expected and len(seen) == 6
    assert api.grants.asked[-1] == (ALICE, "list", NS, None)

    aliases = await api.run(kms.list_aliases, Limit=3)
    assert [a["AliasName"] for a in aliases["Aliases"]] == ["alias/k0", "alias/k1", "alias/k2"]
    rest = await api.run(kms.list_aliases, Marker=aliases["NextMarker"])
    assert [a["AliasName"] for a in rest["Aliases"]] == [
        "alias/k3",
        "alias/k4",
        "alias/payments",
        "alias/team/orders",
    ]
    assert rest["Truncated"] is False
    of_key = await api.run(kms.list_aliases, KeyId=str(api.key.key_id))
    assert {a["TargetKeyId"] for a in of_key["Aliases"]} == {str(api.key.key_id)}
    assert of_key["Aliases"][0]["AliasArn"] == f"arn:aws:kms:{NS}:{ACCOUNT}:alias/payments"
    with pytest.raises(kms.exceptions.InvalidMarkerException):
        await api.run(kms.list_keys, Marker="garbage")


async def test_rotation_status(api: AwsApi) -> None:
    kms = api.kms()
    status = await api.run(kms.get_key_rotation_status, KeyId="alias/payments")
    assert status["KeyRotationEnabled"] is False and "RotationPeriodInDays" not in status
    rotating = api.service.create_key(NS, "rotating", rotation_period_days=90)
    status = await api.run(kms.get_key_rotation_status, KeyId=str(rotating.key_id))
    assert status["KeyRotationEnabled"] is True and status["RotationPeriodInDays"] == 90
    assert status["NextRotationDate"].timestamp() == rotating.next_rotation_at.timestamp()  # type: ignore[union-attr]


async def test_audit_lines_and_metrics_hold_no_plaintext_or_token(api: AwsApi) -> None:
    kms = api.kms()
    secret = b"do-not-log-this-plaintext"
    sealed = await api.run(kms.encrypt, KeyId="alias/payments", Plaintext=secret)
    await api.run(kms.decrypt, CiphertextBlob=sealed["CiphertextBlob"])
    text = "\n".join(api.audit.lines)
    for forbidden in (secret.decode(), base64.b64encode(secret).decode(), ALICE_TOKEN):
        assert forbidden not in text
    records = api.audit.records
    assert [r["operation"] for r in records[-2:]] == ["aws:Encrypt", "aws:Decrypt"]
    assert all(r["outcome"] == "allowed" and r["keyName"] == "payments" for r in records[-2:])
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{api.url}/metrics") as response,
    ):
        metrics = await response.text()
    assert 'operation="aws:Encrypt",outcome="allowed"' in metrics


def test_arns_refuse_an_account_that_is_not_twelve_digits() -> None:
    with pytest.raises(ValueError, match="twelve digits"):
        Arns("12345")
    assert Arns().account == "000000000000"

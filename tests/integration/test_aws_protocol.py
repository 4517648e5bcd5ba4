"""The AWS protocol of the real ``kms-operator run`` process, called by AWS's own clients.

boto3, the AWS CLI, the AWS Encryption SDK and SOPS (built from its Go modules) run
unchanged: the endpoint is the operator's API (``AWS_ENDPOINT_URL_KMS`` or ``endpoint_url``), its
CA is trusted (``AWS_CA_BUNDLE``), the caller's ServiceAccount token for the KMS's audience is
the AWS session token, and access key id and secret key are placeholders. RBAC is the real API
server's (Roles on the CMKs).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aws_encryption_sdk
import botocore.session
import pytest
import yaml
from aws_encryption_sdk import CommitmentPolicy
from botocore.exceptions import ClientError
from kubernetes import client
from tests.integration.accounts import aws_environment, kms_client, service_account
from tests.integration.operator_fixtures import Cmks, OperatorProcess
from tests.support import awstools

pytestmark = pytest.mark.integration

ACCOUNT = "000000000000"


@pytest.fixture
def key(operator_process: OperatorProcess, cmks: Cmks, namespace: str) -> dict[str, Any]:
    cmks.create(namespace, "app-key", {"aliases": ["alias/app"]})
    return cmks.wait_state(namespace, "app-key", "Enabled")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def apply(environment: dict[str, str]) -> None:
        for name, value in environment.items():
            monkeypatch.setenv(name, value)

    yield apply


def audit_lines(operator: OperatorProcess) -> list[dict[str, Any]]:
    text = operator.audit_log.read_text() if operator.audit_log.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line]


def test_boto3_crypto_under_real_rbac_and_audit(
    operator_process: OperatorProcess,
    kube_api: client.ApiClient,
    namespace: str,
    key: dict[str, Any],
) -> None:
    arn = f"arn:aws:kms:{namespace}:{ACCOUNT}:key/{key['keyId']}"
    encrypt_only = kms_client(
        operator_process, service_account(kube_api, namespace, "enc", ["encrypt"])
    )
    sealed = encrypt_only.encrypt(
        KeyId="alias/app", Plaintext=b"hello", EncryptionContext={"a": "b"}
    )
    assert sealed["KeyId"] == arn
    with pytest.raises(ClientError) as refused:
        encrypt_only.decrypt(CiphertextBlob=sealed["CiphertextBlob"], EncryptionContext={"a": "b"})
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"

    user = kms_client(
        operator_process,
        service_account(
            kube_api, namespace, "user", ["encrypt", "decrypt", "generatedatakey", "get", "list"]
        ),
    )
    opened = user.decrypt(CiphertextBlob=sealed["CiphertextBlob"], EncryptionContext={"a": "b"})
    assert opened["Plaintext"] == b"hello" and opened["KeyId"] == arn
    made = user.generate_data_key(KeyId=arn, KeySpec="AES_256")
    assert (
        user.decrypt(CiphertextBlob=made["CiphertextBlob"], KeyId=arn)["Plaintext"]
        == made["Plaintext"]
    )
    assert "Plaintext" not in user.generate_data_key_without_plaintext(KeyId=arn, NumberOfBytes=16)
    assert len(user.generate_random(NumberOfBytes=64)["Plaintext"]) == 64
    metadata = user.describe_key(KeyId="alias/app")["KeyMetadata"]
    assert metadata["Arn"] == arn and metadata["KeyState"] == "Enabled"
    assert [k["KeyArn"] for k in user.list_keys()["Keys"]] == [arn]
    assert [a["AliasName"] for a in user.list_aliases()["Aliases"]] == ["alias/app"]
    assert user.get_key_rotation_status(KeyId=arn)["KeyRotationEnabled"] is False
    with pytest.raises(user.exceptions.NotFoundException):
        user.describe_key(KeyId="alias/nothing")
    with pytest.raises(user.exceptions.UnsupportedOperationException):
        user.list_grants(KeyId=arn)

    lines = [line for line in audit_lines(operator_process) if line["operation"].startswith("aws:")]
    denied = [line for line in lines if line["outcome"] == "denied"]
    assert denied and denied[0]["operation"] == "aws:Decrypt"
    assert denied[0]["caller"] == f"system:serviceaccount:{namespace}:enc"
    assert {line["operation"] for line in lines} >= {
        "aws:Encrypt",
        "aws:GenerateDataKey",
        "aws:ListKeys",
    }
    assert "aGVsbG8=" not in operator_process.audit_log.read_text()  # base64 of the plaintext


def test_a_native_blob_decrypts_through_boto3_and_back(
    operator_process: OperatorProcess,
    kube_api: client.ApiClient,
    namespace: str,
    key: dict[str, Any],
) -> None:
    token = service_account(kube_api, namespace, "both", ["encrypt", "decrypt"])
    context = ssl.create_default_context(cafile=str(operator_process.ca_file))

    def native(path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310
            operator_process.api_url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    ctx = {"tenant": "t1"}
    sealed = native(
        f"/v1/namespaces/{namespace}/keys/app-key/encrypt",
        {"plaintext": base64.b64encode(b"native").decode(), "encryptionContext": ctx},
    )
    kms = kms_client(operator_process, token)
    blob = base64.b64decode(sealed["ciphertextBlob"])
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == b"native"
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"tenant": "t2"})
    back = kms.encrypt(KeyId="alias/app", Plaintext=b"aws", EncryptionContext=ctx)["CiphertextBlob"]
    opened = native(
        "/v1/decrypt", {"ciphertextBlob": base64.b64encode(back).decode(), "encryptionContext": ctx}
    )
    assert base64.b64decode(opened["plaintext"]) == b"aws"


def test_the_aws_cli(
    operator_process: OperatorProcess,
    kube_api: client.ApiClient,
    namespace: str,
    key: dict[str, Any],
    tmp_path: Path,
) -> None:
    token = service_account(kube_api, namespace, "cli", ["encrypt", "decrypt", "get"])
    environment = {**os.environ, **aws_environment(operator_process, token)}
    aws = [str(Path(sys.executable).with_name("aws")), "kms", "--output", "json"]
    plaintext = tmp_path / "plain.txt"
    plaintext.write_bytes(b"from the cli")

    def run(*arguments: str) -> dict[str, Any]:
        done = subprocess.run(
            [*aws, *arguments],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    described = run("describe-key", "--key-id", "alias/app")
    assert described["KeyMetadata"]["KeyId"] == key["keyId"]
    sealed = run("encrypt", "--key-id", "alias/app", "--plaintext", f"fileb://{plaintext}")
    blob = tmp_path / "blob"
    blob.write_bytes(base64.b64decode(sealed["CiphertextBlob"]))
    opened = run("decrypt", "--ciphertext-blob", f"fileb://{blob}")
    assert base64.b64decode(opened["Plaintext"]) == b"from the cli"
    refused = subprocess.run(
        [*aws, "generate-random", "--number-of-bytes", "0"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0


def test_the_aws_encryption_sdk_with_its_kms_master_key_provider(
    operator_process: OperatorProcess,
    kube_api: client.ApiClient,
    namespace: str,
    key: dict[str, Any],
    aws_env: Any,
) -> None:
    token = service_account(kube_api, namespace, "esdk", ["encrypt", "decrypt", "generatedatakey"])
    aws_env(aws_environment(operator_process, token))
    arn = f"arn:aws:kms:{namespace}:{ACCOUNT}:key/{key['keyId']}"
    sdk = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    provider = aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(
        key_ids=[arn], botocore_session=botocore.session.Session()
    )
    message = b"a message of the encryption sdk " * 100
    ciphertext, header = sdk.encrypt(
        source=message, key_provider=provider, encryption_context={"purpose": "test"}
    )
    assert ciphertext != message and message not in ciphertext
    decrypted, decrypt_header = sdk.decrypt(source=ciphertext, key_provider=provider)
    assert decrypted == message
    assert decrypt_header.encryption_context["purpose"] == "test"
    assert [k.key_provider.key_info.decode() for k in header.encrypted_data_keys] == [arn]


def test_sops_encrypts_and_decrypts_a_yaml_file_with_a_key_arn(
    operator_process: OperatorProcess,
    kube_api: client.ApiClient,
    namespace: str,
    key: dict[str, Any],
    tmp_path: Path,
) -> None:
    token = service_account(kube_api, namespace, "sops", ["encrypt", "decrypt"])
    arn = f"arn:aws:kms:{namespace}:{ACCOUNT}:key/{key['keyId']}"
    document = {"database": {"user": "app", "password": "sops-secret-value"}, "port": 5432}
    plain = tmp_path / "app.yaml"
    plain.write_text(yaml.safe_dump(document))
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "SOPS_DISABLE_VERSION_CHECK": "1",
        **aws_environment(operator_process, token),
    }

    def sops(*arguments: str) -> str:
        done = subprocess.run(
            [str(awstools.sops_binary()), *arguments],
            env=environment, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    encrypted = sops("--encrypt", "--kms", arn, str(plain))
    assert "sops-secret-value" not in encrypted and "ENC[AES256_GCM," in encrypted
    (recipient,) = yaml.safe_load(encrypted)["sops"]["kms"]
    assert recipient["arn"] == arn
    sealed = tmp_path / "app.enc.yaml"
    sealed.write_text(encrypted)
    assert yaml.safe_load(sops("--decrypt", str(sealed))) == document
    operations = [line["operation"] for line in audit_lines(operator_process)]
    assert "aws:Encrypt" in operations and "aws:Decrypt" in operations

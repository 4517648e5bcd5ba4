"""The AWS lifecycle operations of the real ``kms-operator run`` process, with boto3, against
the real control plane: each acts on the custom resources (read back here through the
Kubernetes API) and answers once the operator applied it.

Callers are real ServiceAccounts with tokens for the KMS's audience, carried as the AWS session
token; their rights come from real Roles (TokenReview and SubjectAccessReview are the API
server's). A day lasts an hour here, so import parameters and pending windows outlast a test.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from kubernetes import client
from tests.integration.accounts import kms_client, service_account
from tests.integration.operator_fixtures import (
    GROUP,
    VERSION,
    Cmks,
    OperatorProcess,
    wait_for,
)

pytestmark = pytest.mark.integration

OPERATOR_DAY_SECONDS = 3600
CMKS, KMIS = "customermasterkeys", "keymaterialimports"
EVERYTHING = {
    CMKS: ["get", "list", "create", "patch", "delete", "encrypt", "decrypt"],
    KMIS: ["get", "create", "patch", "delete"],
}

Kms = Any  # a boto3 KMS client
MakeKms = Callable[[str, dict[str, list[str]]], Kms]


@pytest.fixture
def make_kms(
    operator_process: OperatorProcess, kube_api: client.ApiClient, namespace: str
) -> MakeKms:
    """A boto3 client of the operator's API for a new ServiceAccount of ``namespace``."""

    def make(name: str, rules: dict[str, list[str]]) -> Kms:
        return kms_client(operator_process, service_account(kube_api, namespace, name, rules))

    return make


def _code(call: Callable[..., Any], **members: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(**members)
    return str(caught.value.response["Error"]["Code"])


def _spec(cmks: Cmks, namespace: str, name: str) -> dict[str, Any]:
    body = cmks.get(namespace, name)
    assert body is not None
    return dict(body["spec"])


def _kmis(kube_api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    answer = client.CustomObjectsApi(kube_api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, KMIS
    )
    return list(answer["items"])


def test_create_key_aliases_enable_disable_and_rotation_act_on_the_object(
    make_kms: MakeKms, cmks: Cmks, namespace: str
) -> None:
    kms = make_kms("owner", EVERYTHING)
    created = kms.create_key(
        Description="orders", Tags=[{"TagKey": "kms.cmk.dev/name", "TagValue": "orders"}]
    )["KeyMetadata"]
    key_id = created["KeyId"]
    assert created["Arn"] == f"arn:aws:kms:{namespace}:000000000000:key/{key_id}"
    assert (created["KeyState"], created["Description"]) == ("Enabled", "orders")
    assert _spec(cmks, namespace, "orders")["description"] == "orders"
    cmks.wait_status(namespace, "orders", lambda s: s.get("keyId") == key_id)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    generated = kms.create_key()["KeyMetadata"]
    (name,) = [
        item["metadata"]["name"]
        for item in cmks.api.list_namespaced_custom_object(GROUP, VERSION, namespace, CMKS)["items"]
        if item["metadata"]["name"] != "orders"
    ]
    assert name.startswith("key-")
    assert cmks.wait_state(namespace, name, "Enabled")["keyId"] == generated["KeyId"]

    # Aliases: spec.aliases of each object touched.
    kms.create_alias(AliasName="alias/orders", TargetKeyId=key_id)
    assert _spec(cmks, namespace, "orders")["aliases"] == ["alias/orders"]
    assert _code(kms.create_alias, AliasName="alias/orders", TargetKeyId=generated["KeyId"]) == (
        "AlreadyExistsException"
    )
    listed = kms.list_aliases()["Aliases"]
    assert [(a["AliasName"], a["TargetKeyId"]) for a in listed] == [("alias/orders", key_id)]
    kms.update_alias(AliasName="alias/orders", TargetKeyId=generated["KeyId"])
    assert _spec(cmks, namespace, "orders")["aliases"] == []
    assert _spec(cmks, namespace, name)["aliases"] == ["alias/orders"]
    kms.delete_alias(AliasName="alias/orders")
    assert _spec(cmks, namespace, name)["aliases"] == []
    assert _code(kms.delete_alias, AliasName="alias/orders") == "NotFoundException"

    # Disable and enable: spec.enabled.
    kms.disable_key(KeyId=key_id)
    assert _spec(cmks, namespace, "orders")["enabled"] is False
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    assert _code(kms.encrypt, KeyId=key_id, Plaintext=b"x") == "DisabledException"
    kms.enable_key(KeyId=key_id)
    assert _spec(cmks, namespace, "orders")["enabled"] is True
    assert kms.encrypt(KeyId=key_id, Plaintext=b"x")["KeyId"] == created["Arn"]

    # Rotation: spec.rotation, and on demand the annotation (a new current version).
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    assert _spec(cmks, namespace, "orders")["rotation"] == {"periodDays": 90}
    status = kms.get_key_rotation_status(KeyId=key_id)
    assert (status["KeyRotationEnabled"], status["RotationPeriodInDays"]) == (True, 90)
    kms.disable_key_rotation(KeyId=key_id)
    assert "rotation" not in _spec(cmks, namespace, "orders")
    assert kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False
    before = cmks.status(namespace, "orders")["currentVersion"]
    assert kms.rotate_key_on_demand(KeyId=key_id)["KeyId"] == created["Arn"]
    cmks.wait_status(
        namespace, "orders", lambda s: s.get("currentVersion") == before + 1, what="rotation"
    )


def test_schedule_and_cancel_key_deletion(make_kms: MakeKms, cmks: Cmks, namespace: str) -> None:
    kms = make_kms("owner", EVERYTHING)
    key_id = kms.create_key(Tags=[{"TagKey": "kms.cmk.dev/name", "TagValue": "doomed"}])[
        "KeyMetadata"
    ]["KeyId"]
    old = cmks.get(namespace, "doomed")
    assert old is not None
    scheduled = kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert (scheduled["KeyState"], scheduled["PendingWindowInDays"]) == ("PendingDeletion", 7)
    terminating = cmks.get(namespace, "doomed")
    assert terminating is not None and terminating["metadata"].get("deletionTimestamp")
    assert terminating["spec"]["pendingWindowDays"] == 7
    cmks.wait_state(namespace, "doomed", "PendingDeletion")
    described = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert described["KeyState"] == "PendingDeletion"
    assert described["DeletionDate"] == scheduled["DeletionDate"]
    assert _code(kms.encrypt, KeyId=key_id, Plaintext=b"x") == "KMSInvalidStateException"

    assert kms.cancel_key_deletion(KeyId=key_id)["KeyId"] == scheduled["KeyId"]
    fresh = cmks.get(namespace, "doomed")
    assert fresh is not None and not fresh["metadata"].get("deletionTimestamp")
    assert fresh["metadata"]["uid"] != old["metadata"]["uid"]
    assert cmks.wait_state(namespace, "doomed", "Disabled")["keyId"] == key_id
    described = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (described["KeyState"], described["KeyId"]) == ("Disabled", key_id)
    assert "DeletionDate" not in described
    kms.enable_key(KeyId=key_id)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"


def _wrap(parameters: dict[str, Any], material: bytes) -> bytes:
    public_key = serialization.load_der_public_key(parameters["PublicKey"])
    assert isinstance(public_key, rsa.RSAPublicKey)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    return public_key.encrypt(material, oaep)


def _import(kms: Kms, key_id: str, material: bytes) -> None:
    parameters = kms.get_parameters_for_import(
        KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048"
    )
    kms.import_key_material(
        KeyId=key_id,
        ImportToken=parameters["ImportToken"],
        EncryptedKeyMaterial=_wrap(parameters, material),
        ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
    )


def test_external_key_import_delete_and_import_again(
    make_kms: MakeKms, kube_api: client.ApiClient, cmks: Cmks, namespace: str
) -> None:
    kms = make_kms("importer", EVERYTHING)
    key_id = kms.create_key(
        Origin="EXTERNAL", Tags=[{"TagKey": "kms.cmk.dev/name", "TagValue": "byok"}]
    )["KeyMetadata"]["KeyId"]
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingImport"
    parameters = kms.get_parameters_for_import(
        KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048"
    )
    (kmi,) = _kmis(kube_api, namespace)
    assert kmi["spec"]["keyRef"] == {"name": "byok"}
    assert parameters["ImportToken"].decode() == kmi["status"]["importToken"]
    material = os.urandom(32)
    wrong = _wrap(parameters, os.urandom(16))
    assert _code(
        kms.import_key_material,
        KeyId=key_id,
        ImportToken=parameters["ImportToken"],
        EncryptedKeyMaterial=wrong,
        ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
    ) == ("IncorrectKeyMaterialException")
    kms.import_key_material(
        KeyId=key_id,
        ImportToken=parameters["ImportToken"],
        EncryptedKeyMaterial=_wrap(parameters, material),
        ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
    )
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    sealed = kms.encrypt(KeyId=key_id, Plaintext=b"bring your own key")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=sealed)["Plaintext"] == b"bring your own key"

    kms.delete_imported_key_material(KeyId=key_id)
    wait_for(lambda: not _kmis(kube_api, namespace), what="the KeyMaterialImport to go")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingImport"
    assert _code(kms.encrypt, KeyId=key_id, Plaintext=b"x") == "KMSInvalidStateException"

    _import(kms, key_id, material)
    assert kms.decrypt(CiphertextBlob=sealed)["Plaintext"] == b"bring your own key"
    cmks.wait_state(namespace, "byok", "Enabled")


def test_a_caller_without_the_verb_is_denied_and_nothing_changes(
    make_kms: MakeKms, kube_api: client.ApiClient, cmks: Cmks, namespace: str
) -> None:
    cmks.create(namespace, "kept", {"aliases": ["alias/kept"]})
    cmks.create(namespace, "byok", {"origin": "EXTERNAL"})
    key_id = cmks.wait_state(namespace, "kept", "Enabled")["keyId"]
    external = cmks.wait_state(namespace, "byok", "PendingImport")["keyId"]
    before = cmks.get(namespace, "kept")
    reader = make_kms("reader", {CMKS: ["get", "list"], KMIS: ["get"]})
    denied = "AccessDeniedException"
    assert _code(reader.create_key) == denied
    assert _code(reader.disable_key, KeyId=key_id) == denied
    assert _code(reader.create_alias, AliasName="alias/other", TargetKeyId=key_id) == denied
    assert _code(reader.delete_alias, AliasName="alias/kept") == denied
    assert _code(reader.enable_key_rotation, KeyId=key_id) == denied
    assert _code(reader.rotate_key_on_demand, KeyId=key_id) == denied
    assert _code(reader.schedule_key_deletion, KeyId=key_id) == denied
    assert (
        _code(
            reader.get_parameters_for_import,
            KeyId=external,
            WrappingAlgorithm="RSAES_OAEP_SHA_256",
            WrappingKeySpec="RSA_2048",
        )
        == denied
    )
    assert _code(reader.delete_imported_key_material, KeyId=external) == denied
    # Nothing changed: the same objects, as they were.
    after = cmks.get(namespace, "kept")
    assert after is not None and before is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    names = [
        item["metadata"]["name"]
        for item in cmks.api.list_namespaced_custom_object(GROUP, VERSION, namespace, CMKS)["items"]
    ]
    assert sorted(names) == ["byok", "kept"]
    assert _kmis(kube_api, namespace) == []
    assert reader.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"

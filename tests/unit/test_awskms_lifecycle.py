"""The AWS lifecycle operations in-process: boto3 against the listener's app, the custom
resources in memory (:class:`tests.support.awsresources.FakeResources`, which also plays the
operator), the authorizer double.

For each operation: its request checks, the verb it needs on which resource and object (asked
before any write), the writes it makes, its waiting for the operator (and DependencyTimeout
when the operator does not come), and the exception classes boto3 raises.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from tests.support.awsapi import ALICE, ALICE_TOKEN, BOB_TOKEN, NS, OTHER_NS, AwsApi, serve
from tests.support.awsresources import CMK, KMI, FakeResources, Write
from tests.support.clocks import ManualClock

from kms_operator.awskms import lifecycle_operations
from kms_operator.awskms.resources import Patience
from kms_operator.contract import CANCEL_DELETION_ANNOTATION, ROTATE_ANNOTATION
from kms_operator.crypto import wrapping
from kms_operator.crypto.wrapping import WrappingAlgorithm
from kms_operator.keys.service import KeyService
from kms_operator.store.records import KeyRecord, KeyState

pytestmark = pytest.mark.unit

FAST = Patience(interval=0.001, api_interval=0.001, timeout=10.0)
IMPATIENT = Patience(interval=0.001, api_interval=0.001, timeout=0.05)
KMIS = "keymaterialimports"


@pytest.fixture
def fake(service: KeyService) -> FakeResources:
    return FakeResources(service)


@pytest.fixture
async def aws(
    service: KeyService, tmp_path: Path, fake: FakeResources, fast_wrapping_keys: None
) -> AsyncIterator[AwsApi]:
    async with serve(service, tmp_path, fake, FAST) as served:
        yield served


@pytest.fixture
def kms(aws: AwsApi) -> Any:
    return aws.kms()


async def _create(aws: AwsApi, kms: Any, **members: Any) -> dict[str, Any]:
    aws.grants.allow(ALICE, "create", NS)
    answer: dict[str, Any] = (await aws.run(kms.create_key, **members))["KeyMetadata"]
    return answer


def _record(aws: AwsApi, key_id: str) -> KeyRecord:
    return aws.service.resolve(NS, key_id)


def _writes(fake: FakeResources) -> list[tuple[str, str, str]]:
    return [(w.verb, w.resource, w.name) for w in fake.writes]


def _patches(fake: FakeResources, name: str) -> list[dict[str, Any]]:
    return [w.body or {} for w in fake.writes if w.verb == "patch" and w.name == name]


def _last_audit(aws: AwsApi) -> dict[str, Any]:
    return aws.audit.records[-1]


def _unchecked(aws: AwsApi) -> Any:
    """A boto3 client that sends what it is given (no parameter checks of its own, so the
    server's are what refuses) and tries once (no retry of a 500)."""
    return boto3.client(
        "kms",
        endpoint_url=aws.url,
        region_name="us-east-1",
        aws_access_key_id="not-a-credential",
        aws_secret_access_key="not-a-credential",
        aws_session_token=ALICE_TOKEN,
        config=Config(parameter_validation=False, retries={"total_max_attempts": 1}),
    )


async def _refused(aws: AwsApi, call: Any, shape: str, /, **members: Any) -> str:
    """The message of the refusal of shape ``shape`` that ``call`` answers (also for the
    shapes boto3 has no class for, such as ValidationException)."""
    with pytest.raises(ClientError) as caught:
        await aws.run(call, **members)
    error = caught.value.response["Error"]
    assert error["Code"] == shape, error
    return str(error["Message"])


# -- without the custom resources ---------------------------------------------------------------


async def test_without_resources_the_lifecycle_operations_are_unsupported(
    service: KeyService, tmp_path: Path
) -> None:
    async with serve(service, tmp_path) as aws:
        kms = aws.kms()
        aws.grants.allow(ALICE, "create,patch,delete", NS)
        with pytest.raises(kms.exceptions.UnsupportedOperationException, match="CreateKey"):
            await aws.run(kms.create_key)
        with pytest.raises(kms.exceptions.UnsupportedOperationException, match="DisableKey"):
            await aws.run(kms.disable_key, KeyId=str(aws.key.key_id))
        assert aws.service.get(aws.key.key_id).state is KeyState.ENABLED
        assert _last_audit(aws)["operation"] == "aws:Unsupported"


# -- CreateKey ----------------------------------------------------------------------------------


async def test_create_key_creates_the_object_and_answers_once_the_key_exists(
    aws: AwsApi, kms: Any, fake: FakeResources
) -> None:
    metadata = await _create(aws, kms, Description="orders")
    ((verb, resource, name),) = _writes(fake)
    assert (verb, resource) == ("create", CMK)
    assert name.startswith("key-") and len(name) == len("key-") + 8
    assert fake.writes[0].body == {
        "apiVersion": "kms.cmk.dev/v1alpha1",
        "kind": "CustomerMasterKey",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "origin": "KMS",
            "keySpec": "SYMMETRIC_DEFAULT",
            "keyUsage": "ENCRYPT_DECRYPT",
            "description": "orders",
        },
    }
    record = aws.service.find(NS, name)
    assert record is not None and metadata["KeyId"] == str(record.key_id)
    assert metadata["Arn"] == f"arn:aws:kms:{NS}:{aws.arns.account}:key/{record.key_id}"
    assert (metadata["KeyState"], metadata["Origin"], metadata["Description"]) == (
        "Enabled",
        "AWS_KMS",
        "orders",
    )
    assert aws.grants.asked == [(ALICE, "create", NS, None)]
    line = _last_audit(aws)
    assert (line["operation"], line["outcome"]) == ("aws:CreateKey", "allowed")
    assert (line["namespace"], line["keyName"], line["keyId"]) == (NS, name, str(record.key_id))
    aws.grants.allow(ALICE, "get", NS)
    described = await aws.run(kms.describe_key, KeyId=metadata["Arn"])
    assert described["KeyMetadata"]["KeyId"] == metadata["KeyId"]


async def test_create_key_tags_choose_name_and_namespace_and_external_origin(
    aws: AwsApi, kms: Any, fake: FakeResources
) -> None:
    aws.grants.allow(ALICE, "create", OTHER_NS)
    tags = [
        {"TagKey": "kms.cmk.dev/name", "TagValue": "ledger"},
        {"TagKey": "kms.cmk.dev/namespace", "TagValue": OTHER_NS},
    ]
    answer = await aws.run(kms.create_key, Origin="EXTERNAL", Tags=tags)
    metadata = answer["KeyMetadata"]
    assert _writes(fake) == [("create", CMK, "ledger")]
    assert fake.writes[0].namespace == OTHER_NS
    assert fake.writes[0].body is not None
    assert fake.writes[0].body["spec"]["origin"] == "EXTERNAL"
    assert (metadata["KeyState"], metadata["Origin"]) == ("PendingImport", "EXTERNAL")
    assert metadata["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE"
    assert metadata["Arn"].startswith(f"arn:aws:kms:{OTHER_NS}:")
    assert aws.grants.asked == [(ALICE, "create", OTHER_NS, None)]
    # The name is taken now.
    with pytest.raises(kms.exceptions.AlreadyExistsException):
        await aws.run(kms.create_key, Tags=tags)
    assert len(fake.writes) == 1


async def test_create_key_tries_another_generated_name_when_one_is_taken(
    aws: AwsApi, kms: Any, fake: FakeResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _create(aws, kms, Tags=[{"TagKey": "kms.cmk.dev/name", "TagValue": "key-00000000"}])
    names = iter(["00000000", "11111111"])
    monkeypatch.setattr(lifecycle_operations.secrets, "token_hex", lambda _: next(names))
    await _create(aws, kms)
    assert _writes(fake) == [("create", CMK, "key-00000000"), ("create", CMK, "key-11111111")]


@pytest.mark.parametrize(
    ("members", "shape", "text"),
    [
        ({"KeyUsage": "SIGN_VERIFY"}, "UnsupportedOperationException", "KeyUsage"),
        ({"KeySpec": "RSA_2048"}, "UnsupportedOperationException", "KeySpec"),
        ({"CustomerMasterKeySpec": "HMAC_256"}, "UnsupportedOperationException", "KeySpec"),
        ({"Origin": "AWS_CLOUDHSM"}, "UnsupportedOperationException", "Origin"),
        ({"MultiRegion": True}, "UnsupportedOperationException", "multi-Region"),
        ({"CustomKeyStoreId": "cks-1"}, "UnsupportedOperationException", "custom key stores"),
        ({"XksKeyId": "x"}, "UnsupportedOperationException", "custom key stores"),
        ({"Policy": "{}"}, "UnsupportedOperationException", "RBAC"),
        ({"Tags": [{"TagKey": "team", "TagValue": "a"}]}, "TagException", "not kept"),
        (
            {"Tags": [{"TagKey": "kms.cmk.dev/name", "TagValue": "Not_A_Name"}]},
            "TagException",
            "object name",
        ),
        (
            {"Tags": [{"TagKey": "kms.cmk.dev/namespace", "TagValue": "a.b"}]},
            "TagException",
            "namespace",
        ),
        ({"Description": "x" * 8193}, "ValidationException", "Description"),
    ],
)
async def test_create_key_refuses_what_it_cannot_make(
    aws: AwsApi,
    kms: Any,
    fake: FakeResources,
    *,
    members: dict[str, Any],
    shape: str,
    text: str,
) -> None:
    aws.grants.allow(ALICE, "create", NS)
    assert text in await _refused(aws, kms.create_key, shape, **members)
    assert fake.writes == [] and aws.grants.asked == []


async def test_create_key_needs_create_before_any_write(
    aws: AwsApi, kms: Any, fake: FakeResources
) -> None:
    await _refused(aws, kms.create_key, "AccessDeniedException")
    assert fake.writes == []
    assert aws.grants.asked == [(ALICE, "create", NS, None)]
    assert _last_audit(aws)["outcome"] == "denied"


async def test_create_key_waits_for_the_operator(
    aws: AwsApi, kms: Any, fake: FakeResources
) -> None:
    fake.operating = False
    created = asyncio.ensure_future(_create(aws, kms))
    while not fake.writes:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)
    assert not created.done()
    fake.catch_up()
    metadata = await created
    assert metadata["KeyState"] == "Enabled"


async def test_an_operator_that_does_not_come_is_a_dependency_timeout(
    service: KeyService, tmp_path: Path, fake: FakeResources
) -> None:
    fake.operating = False
    async with serve(service, tmp_path, fake, IMPATIENT) as aws:
        aws.grants.allow(ALICE, "create", NS)
        message = await _refused(aws, _unchecked(aws).create_key, "DependencyTimeoutException")
        assert "may still" in message
    assert [w.verb for w in fake.writes] == ["create"]
    fake.catch_up()  # the operator comes after all: the key exists
    assert [r.name for r in service.keys() if r.name.startswith("key-")]


# -- aliases ------------------------------------------------------------------------------------


async def test_create_alias_patches_the_targets_aliases(
    aws: AwsApi, kms: Any, fake: FakeResources
) -> None:
    key = await _create(aws, kms, Tags=[{"TagKey": "kms.cmk.dev/name", "TagValue": "orders"}])
    aws.grants.allow(ALICE, "patch", NS, "orders")
    aws.grants.asked.clear()
    await aws.run(kms.create_alias, AliasName="alias/orders", TargetKeyId=key["KeyId"])
    await aws.run(kms.create_alias, AliasName="alias/orders/v2", TargetKeyId=key["Arn"])
    patches = _patches(fake, "orders")
    assert [p["spec"] for p in patches] == [
        {"aliases": ["alias/orders"]},
        {"aliases": ["alias/orders", "alias/orders/v2"]},
    ]
    assert aws.grants.asked == [(ALICE, "patch", NS, "orders")] * 2
    assert aws.service.resolve(NS, "alias/orders/v2").key_id == _record(aws, key["KeyId"]).key_id
    line = _last_audit(aws)
    assert (line["operation"], line["keyName"], line["keyId"]) == (
        "aws:CreateAlias",
        "orders",
        key["KeyId"],
    )


@pytest.mark.parametrize(
    ("alias", "shape", "text"),
    [
        ("alias/payments", "AlreadyExistsException", "exists already"),
        ("alias/kms/datakeys", "ValidationException", "reserved"),
        ("alias/aws/s3", "InvalidAliasNameException", "reserved"),
        ("alias/white space", "InvalidAliasNameException", "alias/<name>"),
        ("orders", "InvalidAliasNameException", "alias/<name>"),
    ],
)
async def test_create_alias_refusals(
    aws: AwsApi, kms: Any, fake: FakeResources, *, alias: str, shape: str, text: str
) -> None:
    aws.grants.allow(ALICE, "patch", NS)
    message = await _refused(
        aws, kms.create_alias, shape, AliasName=alias, TargetKeyId=str(aws.key.key_id)
    )
    assert text in message
    assert fake.writes == []


async def test_update_alias_moves_it_patching_both_keys(
    aws: AwsApi, kms: Any, fake: FakeResources
) -> None:
    first = await _create(aws, kms, Tags=[{"TagKey": "kms.cmk.dev/name", "TagValue": "first"}])
    second = await _create(aws, kms, Tags=[{"TagKey": "kms.cmk.dev/name", "TagValue": "second"}])
    aws.grants.allow(ALICE, "patch", NS, "first")
    await aws.run(kms.create_alias, AliasName="alias/current", TargetKeyId=first["KeyId"])
    aws.grants.asked.clear()
    await _refused(
        aws,
        kms.update_alias,
        "AccessDeniedException",
        AliasName="alias/current",
        TargetKeyId=second["KeyId"],
    )
    assert aws.grants.asked == [(ALICE, "patch", NS, "first"), (ALICE, "patch", NS, "second")]
    assert len(_patches(fake, "first")) == 1  # nothing written
    aws.grants.allow(ALICE, "patch", NS, "second")
    await aws.run(kms.update_alias, AliasName="alias/current", TargetKeyId=second["KeyId"])
    assert [p["spec"] for p in _patches(fake, "first")] == [
        {"aliases": ["alias/current"]},
        {"aliases": []},
    ]
    assert [p["spec"] for p in _patches(fake, "second")] == [{"aliases": ["alias/current"]}]
    assert str(aws.service.resolve(NS, "alias/current").key_id) == second["KeyId"]
    line = _last_audit(aws)
    assert (line["keyName"], line["source"]["keyName"]) == ("second", "first")


async def test_update_and_delete_alias_of_an_unknown_alias_is_not_found_once_authorized(
    aws: AwsApi, kms: Any, fake: FakeResources
) -> None:
    await _refused(aws, kms.delete_alias, "AccessDeniedException", AliasName="alias/nothing")
    assert aws.grants.asked == [(ALICE, "patch", NS, "alias/nothing")]
    aws.grants.allow(ALICE, "patch", NS)
    with pytest.raises(kms.exceptions.NotFoundException):
        await aws.run(kms.delete_alias, AliasName="alias/nothing")
    with pytest.raises(kms.exceptions.NotFoundException):
        await aws.run(kms.update_alias, AliasName="alias/nothing", TargetKeyId=str(aws.key.key_id))
    assert fake.writes == []


async def test_delete_alias_patches_it_away(aws: AwsApi, kms: Any, fake: FakeResources) -> None:
    key = await _create(aws, kms, Tags=[{"TagKey": "kms.cmk.dev/name", "TagValue": "orders"}])
    aws.grants.allow(ALICE, "patch", NS, "orders")
    await aws.run(kms.create_alias, AliasName="alias/orders", TargetKeyId=key["KeyId"])
    arn = aws.arns.alias(NS, "alias/orders")
    await aws.run(kms.delete_alias, AliasName=arn)
    assert _patches(fake, "orders")[-1]["spec"] == {"aliases": []}
    assert _record(aws, key["KeyId"]).aliases == ()
    assert _last_audit(aws)["keyId"] == key["KeyId"]


async def test_the_default_keys_own_alias_stays(aws: AwsApi, kms: Any, fake: FakeResources) -> None:
    default = aws.service.create_key(
        NS, "kms-default-datakeys", aliases=("alias/kms/datakeys",), default_service="datakeys"
    )
    aws.grants.allow(ALICE, "patch", NS)
    with pytest.raises(kms.exceptions.UnsupportedOperationException, match="default key"):
        await aws.run(kms.delete_alias, AliasName="alias/kms/datakeys")
    with pytest.raises(kms.exceptions.UnsupportedOperationException, match="default key"):
        await aws.run(kms.disable_key, KeyId=str(default.key_id))
    assert fake.writes == []


# -- EnableKey / DisableKey ---------------------------------------------------------------------


async def test_disable_and_enable_patch_spec_enabled(
    aws: AwsApi, kms: Any, fake: FakeResources
) -> None:
    key = await _create(aws, kms, Tags=[{"TagKey": "kms.cmk.dev/name", "TagValue": "orders"}])
    aws.grants.asked.clear()
    await _refused(aws, kms.disable_key, "AccessDeniedException", KeyId=key["KeyId"])
    assert aws.grants.asked == [(ALICE, "patch", NS, "orders")]
    assert _patches(fake, "orders") == []
    aws.grants.allow(ALICE, "patch", NS, "orders")
    await aws.run(kms.disable_key, KeyId=key["KeyId"])
    assert _record(aws, key["KeyId"]).state is KeyState.DISABLED
    await aws.run(kms.disable_key, KeyId=key["KeyId"])  # nothing to change: no patch
    await aws.run(kms.enable_key, KeyId=key["KeyId"])
    assert _record(aws, key["KeyId"]).state is KeyState.ENABLED
    patches = _patches(fake, "orders")
    assert [p["spec"] for p in patches] == [{"enabled": False}, {"enabled": True}]
    assert all(p["metadata"]["resourceVersion"] for p in patches)
    assert _last_audit(aws)["operation"] == "aws:EnableKey"


async def test_a_change_made_meanwhile_is_read_again_not_overwritten(
    aws: AwsApi, kms: Any, fake: FakeResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = await _create(aws, kms, Tags=[{"TagKey": "kms.cmk.dev/name", "TagValue": "orders"}])
    aws.grants.allow(ALICE, "patch", NS, "orders")
    real_get = fake.get_cmk
    reads = 0

    def get_then_someone_patches(namespace: str, name: str) -> Any:
        nonlocal reads
        body = real_get(namespace, name)
        reads += 1
        if reads == 1:  # a kubectl user adds an alias right after this read
            fake.patch_cmk(namespace, name, {"spec": {"aliases": ["alias/by-kubectl"]}})
        return body

    monkeypatch.setattr(fake, "get_cmk", get_then_someone_patches)
    await aws.run(kms.create_alias, AliasName="alias/by-aws", TargetKeyId=key["KeyId"])
    assert _record(aws, key["KeyId"]).aliases == ("alias/by-aws", "alias/by-kubectl")


async def test_an_unknown_key_is_authorized_against_its_reference_first(
    aws: AwsApi, kms: Any, fake: FakeResources
) -> None:
    unknown = "0b1e2d3c-0000-4000-8000-000000000000"
    await _refused(aws, kms.enable_key, "AccessDeniedException", KeyId=unknown)
    assert aws.grants.asked == [(ALICE, "patch", NS, unknown)]
    aws.grants.allow(ALICE, "patch", NS)
    with pytest.raises(kms.exceptions.NotFoundException):
        await aws.run(kms.enable_key, KeyId=unknown)
    assert fake.writes == []


# -- rotation -----------------------------------------------------------------------------------


async def test_key_rotation_on_and_off_patches_spec_rotation(
    aws: AwsApi, kms: Any, fake: FakeResources
) -> None:
    key = await _create(aws, kms, Tags=[{"TagKey": "kms.cmk.dev/name", "TagValue": "orders"}])
    aws.grants.allow(ALICE, "patch,get", NS, "orders")
    await aws.run(kms.enable_key_rotation, KeyId=key["KeyId"])
    status = await aws.run(kms.get_key_rotation_status, KeyId=key["KeyId"])
    assert (status["KeyRotationEnabled"], status["RotationPeriodInDays"]) == (True, 365)
    await aws.run(kms.enable_key_rotation, KeyId=key["KeyId"], RotationPeriodInDays=90)
    await aws.run(kms.disable_key_rotation, KeyId=key["KeyId"])
    assert [p["spec"] for p in _patches(fake, "orders")] == [
        {"rotation": {"periodDays": 365}},
        {"rotation": {"periodDays": 90}},
        {"rotation": None},
    ]
    assert _record(aws, key["KeyId"]).rotation_period_days is None
    for days in (89, 2561):
        message = await _refused(
            aws,
            _unchecked(aws).enable_key_rotation,
            "ValidationException",
            KeyId=key["KeyId"],
            RotationPeriodInDays=days,
        )
        assert "between 90 and 2560" in message
    assert len(_patches(fake, "orders")) == 3


async def test_rotate_on_demand_sets_the_annotation_and_waits_for_the_new_version(
    aws: AwsApi, kms: Any, fake: FakeResources
) -> None:
    key = await _create(aws, kms, Tags=[{"TagKey": "kms.cmk.dev/name", "TagValue": "orders"}])
    aws.grants.allow(ALICE, "patch", NS, "orders")
    answer = await aws.run(kms.rotate_key_on_demand, KeyId=key["KeyId"])
    assert answer["KeyId"] == key["Arn"]
    (patch,) = _patches(fake, "orders")
    assert set(patch["metadata"]["annotations"]) == {ROTATE_ANNOTATION}
    assert _record(aws, key["KeyId"]).current_version == 2
    await aws.run(kms.rotate_key_on_demand, KeyId=key["KeyId"])
    assert _record(aws, key["KeyId"]).current_version == 3
    await aws.run(kms.disable_key, KeyId=key["KeyId"])
    with pytest.raises(kms.exceptions.DisabledException):
        await aws.run(kms.rotate_key_on_demand, KeyId=key["KeyId"])
    assert _last_audit(aws)["keyId"] == key["KeyId"]


async def test_external_keys_have_no_rotation(aws: AwsApi, kms: Any, fake: FakeResources) -> None:
    key = await _create(aws, kms, Origin="EXTERNAL")
    aws.grants.allow(ALICE, "patch", NS)
    for operation in (kms.enable_key_rotation, kms.disable_key_rotation, kms.rotate_key_on_demand):
        with pytest.raises(kms.exceptions.UnsupportedOperationException, match="EXTERNAL"):
            await aws.run(operation, KeyId=key["KeyId"])
    assert [w.verb for w in fake.writes] == ["create"]


# -- deletion -----------------------------------------------------------------------------------


async def test_schedule_key_deletion_with_the_objects_window_only_deletes(
    aws: AwsApi, kms: Any, fake: FakeResources, clock: ManualClock
) -> None:
    key = await _create(aws, kms, Tags=[{"TagKey": "kms.cmk.dev/name", "TagValue": "orders"}])
    aws.grants.allow(ALICE, "delete", NS, "orders")
    aws.grants.asked.clear()
    answer = await aws.run(kms.schedule_key_deletion, KeyId=key["KeyId"])
    assert aws.grants.asked == [(ALICE, "delete", NS, "orders")]
    assert _writes(fake)[1:] == [("delete", CMK, "orders")]
    record = _record(aws, key["KeyId"])
    assert record.state is KeyState.PENDING_DELETION
    assert answer["KeyId"] == key["Arn"]
    assert (answer["KeyState"], answer["PendingWindowInDays"]) == ("PendingDeletion", 30)
    assert answer["DeletionDate"] == clock.now() + timedelta(days=30)
    with pytest.raises(kms.exceptions.KMSInvalidStateException):
        await aws.run(kms.schedule_key_deletion, KeyId=key["KeyId"])
    assert _last_audit(aws)["keyId"] == key["KeyId"]


async def test_schedule_key_deletion_with_another_window_patches_it_first(
    aws: AwsApi, kms: Any, fake: FakeResources, clock: ManualClock
) -> None:
    key = await _create(aws, kms, Tags=[{"TagKey": "kms.cmk.dev/name", "TagValue": "orders"}])
    aws.grants.allow(ALICE, "delete", NS, "orders")
    aws.grants.asked.clear()
    await _refused(
        aws,
        kms.schedule_key_deletion,
        "AccessDeniedException",
        KeyId=key["KeyId"],
        PendingWindowInDays=7,
    )
    assert aws.grants.asked == [(ALICE, "delete", NS, "orders"), (ALICE, "patch", NS, "orders")]
    assert _writes(fake) == [("create", CMK, "orders")]
    aws.grants.allow(ALICE, "patch", NS, "orders")
    answer = await aws.run(kms.schedule_key_deletion, KeyId=key["KeyId"], PendingWindowInDays=7)
    assert _writes(fake)[1:] == [("patch", CMK, "orders"), ("delete", CMK, "orders")]
    assert _patches(fake, "orders")[0]["spec"] == {"pendingWindowDays": 7}
    assert answer["PendingWindowInDays"] == 7
    assert answer["DeletionDate"] == clock.now() + timedelta(days=7)
    for days in (6, 31):
        message = await _refused(
            aws,
            _unchecked(aws).schedule_key_deletion,
            "ValidationException",
            KeyId=key["KeyId"],
            PendingWindowInDays=days,
        )
        assert "between 7 and 30" in message


async def test_cancel_key_deletion_annotates_and_waits_for_the_object_again(
    aws: AwsApi, kms: Any, fake: FakeResources
) -> None:
    key = await _create(aws, kms, Tags=[{"TagKey": "kms.cmk.dev/name", "TagValue": "orders"}])
    aws.grants.allow(ALICE, "patch", NS, "orders")
    with pytest.raises(kms.exceptions.KMSInvalidStateException, match="no deletion"):
        await aws.run(kms.cancel_key_deletion, KeyId=key["KeyId"])
    aws.grants.allow(ALICE, "delete", NS, "orders")
    await aws.run(kms.schedule_key_deletion, KeyId=key["KeyId"])
    old = fake.object(CMK, NS, "orders")
    assert old is not None
    answer = await aws.run(kms.cancel_key_deletion, KeyId=key["KeyId"])
    assert answer == {"KeyId": key["Arn"], "ResponseMetadata": answer["ResponseMetadata"]}
    (*_, patch) = _patches(fake, "orders")
    assert patch["metadata"]["annotations"] == {CANCEL_DELETION_ANNOTATION: "true"}
    record = _record(aws, key["KeyId"])
    assert record.state is KeyState.DISABLED
    fresh = fake.object(CMK, NS, "orders")
    assert fresh is not None and fresh["metadata"]["uid"] != old["metadata"]["uid"]
    assert record.object_uid == fresh["metadata"]["uid"]
    await aws.run(kms.enable_key, KeyId=key["KeyId"])
    assert _record(aws, key["KeyId"]).state is KeyState.ENABLED


async def test_default_keys_cannot_be_deleted(aws: AwsApi, kms: Any, fake: FakeResources) -> None:
    default = aws.service.create_key(
        NS, "kms-default-datakeys", aliases=("alias/kms/datakeys",), default_service="datakeys"
    )
    aws.grants.allow(ALICE, "delete,patch", NS)
    with pytest.raises(kms.exceptions.UnsupportedOperationException, match="default key"):
        await aws.run(kms.schedule_key_deletion, KeyId="alias/kms/datakeys")
    with pytest.raises(kms.exceptions.UnsupportedOperationException, match="default key"):
        await aws.run(kms.rotate_key_on_demand, KeyId=str(default.key_id))
    assert fake.writes == []


# -- imports ------------------------------------------------------------------------------------


def _wrap(parameters: dict[str, Any], material: bytes) -> bytes:
    public_key = serialization.load_der_public_key(parameters["PublicKey"])
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return wrapping.wrap_material(WrappingAlgorithm.RSAES_OAEP_SHA_256, pem, material)


async def _external_key(aws: AwsApi, kms: Any) -> dict[str, Any]:
    key = await _create(aws, kms, Origin="EXTERNAL", Tags=[
        {"TagKey": "kms.cmk.dev/name", "TagValue": "imported"}
    ])  # fmt: skip
    aws.grants.allow(ALICE, f"{KMIS}:create,{KMIS}:get,{KMIS}:patch,{KMIS}:delete", NS)
    aws.grants.allow(ALICE, "encrypt,decrypt", NS)
    aws.grants.asked.clear()
    return key


async def _parameters(aws: AwsApi, kms: Any, key: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = await aws.run(
        kms.get_parameters_for_import,
        KeyId=key["KeyId"],
        WrappingAlgorithm="RSAES_OAEP_SHA_256",
        WrappingKeySpec="RSA_2048",
    )
    return answer


async def test_import_round_trip_through_key_material_imports(
    aws: AwsApi, kms: Any, fake: FakeResources, clock: ManualClock
) -> None:
    key = await _external_key(aws, kms)
    parameters = await _parameters(aws, kms, key)
    ((kmi,),) = [fake.kmis_of(NS, "imported")]
    name = kmi["metadata"]["name"]
    assert name.startswith("imported-")
    assert aws.grants.asked == [
        (ALICE, f"{KMIS}:create", NS, None),
        (ALICE, f"{KMIS}:get", NS, name),
    ]
    assert fake.writes[-1] == Write(
        "create",
        KMI,
        NS,
        name,
        {
            "apiVersion": "kms.cmk.dev/v1alpha1",
            "kind": "KeyMaterialImport",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "keyRef": {"name": "imported"},
                "wrappingAlgorithm": "RSAES_OAEP_SHA_256",
                "wrappingKeySpec": "RSA_2048",
            },
        },
    )
    assert parameters["KeyId"] == key["Arn"]
    assert parameters["ImportToken"].decode() == kmi["status"]["importToken"]
    assert parameters["ParametersValidTo"] == clock.now() + timedelta(days=1)
    assert _last_audit(aws)["keyId"] == key["KeyId"]

    material = os.urandom(32)
    aws.grants.asked.clear()
    valid_to = clock.now() + timedelta(days=10)
    answer = await aws.run(
        kms.import_key_material,
        KeyId=key["KeyId"],
        ImportToken=parameters["ImportToken"],
        EncryptedKeyMaterial=_wrap(parameters, material),
        ValidTo=valid_to,
        ExpirationModel="KEY_MATERIAL_EXPIRES",
    )
    assert set(answer) == {"ResponseMetadata"}
    assert aws.grants.asked == [
        (ALICE, f"{KMIS}:patch", NS, name),
        (ALICE, f"{KMIS}:get", NS, name),
    ]
    (patch,) = _patches(fake, name)
    assert patch["spec"]["importToken"] == kmi["status"]["importToken"]
    assert base64.b64decode(patch["spec"]["encryptedKeyMaterial"])
    assert patch["spec"]["validTo"] == valid_to.strftime("%Y-%m-%dT%H:%M:%SZ")
    described = _record(aws, key["KeyId"])
    assert described.state is KeyState.ENABLED
    sealed = await aws.run(kms.encrypt, KeyId=key["KeyId"], Plaintext=b"kept")
    # The same token again: a KeyMaterialImport imports once.
    with pytest.raises(kms.exceptions.InvalidImportTokenException, match="used already"):
        await aws.run(
            kms.import_key_material,
            KeyId=key["KeyId"],
            ImportToken=parameters["ImportToken"],
            EncryptedKeyMaterial=_wrap(parameters, material),
        )

    # Delete the material: the import that holds it is deleted, the key is PendingImport.
    aws.grants.asked.clear()
    await aws.run(kms.delete_imported_key_material, KeyId=key["KeyId"])
    assert aws.grants.asked == [(ALICE, f"{KMIS}:delete", NS, name)]
    assert fake.writes[-1] == Write("delete", KMI, NS, name, None)
    assert _record(aws, key["KeyId"]).state is KeyState.PENDING_IMPORT
    with pytest.raises(kms.exceptions.KMSInvalidStateException):
        await aws.run(kms.encrypt, KeyId=key["KeyId"], Plaintext=b"x")
    await aws.run(kms.delete_imported_key_material, KeyId=key["KeyId"])  # nothing left: done

    # The same material again, through new parameters, brings the old blobs back.
    again = await _parameters(aws, kms, key)
    await aws.run(
        kms.import_key_material,
        KeyId=key["KeyId"],
        ImportToken=again["ImportToken"],
        EncryptedKeyMaterial=_wrap(again, material),
        ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
    )
    opened = await aws.run(kms.decrypt, CiphertextBlob=sealed["CiphertextBlob"])
    assert opened["Plaintext"] == b"kept"


async def test_import_refusals_are_awss_exceptions(
    aws: AwsApi, kms: Any, fake: FakeResources, clock: ManualClock
) -> None:
    key = await _external_key(aws, kms)
    parameters = await _parameters(aws, kms, key)
    wrapped = _wrap(parameters, os.urandom(32))
    members = {"KeyId": key["KeyId"], "ImportToken": parameters["ImportToken"]}
    with pytest.raises(kms.exceptions.InvalidImportTokenException):
        await aws.run(
            kms.import_key_material, **{**members, "ImportToken": b"kmsit1_other"},
            EncryptedKeyMaterial=wrapped,
        )  # fmt: skip
    with pytest.raises(kms.exceptions.IncorrectKeyMaterialException):
        await aws.run(kms.import_key_material, **members, EncryptedKeyMaterial=b"\0" * 256)
    with pytest.raises(kms.exceptions.IncorrectKeyMaterialException, match="32 bytes"):
        await aws.run(
            kms.import_key_material, **members, EncryptedKeyMaterial=_wrap(parameters, b"short")
        )
    assert "needs ValidTo" in await _refused(
        aws, kms.import_key_material, "ValidationException", **members,
        EncryptedKeyMaterial=wrapped, ExpirationModel="KEY_MATERIAL_EXPIRES",
    )  # fmt: skip
    assert "contradicts" in await _refused(
        aws, kms.import_key_material, "ValidationException", **members,
        EncryptedKeyMaterial=wrapped, ValidTo=clock.now() + timedelta(days=1),
        ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
    )  # fmt: skip
    # Beyond the domain's longest validity: the operator refuses it, as the spec's.
    assert "validTo" in await _refused(
        aws, kms.import_key_material, "ValidationException", **members,
        EncryptedKeyMaterial=wrapped, ValidTo=clock.now() + timedelta(days=400),
    )  # fmt: skip
    clock.advance(timedelta(days=2))
    with pytest.raises(kms.exceptions.ExpiredImportTokenException):
        await aws.run(kms.import_key_material, **members, EncryptedKeyMaterial=wrapped)
    assert _record(aws, key["KeyId"]).state is KeyState.PENDING_IMPORT


async def test_import_needs_verbs_on_key_material_imports_first(
    aws: AwsApi, kms: Any, fake: FakeResources
) -> None:
    key = await _create(aws, kms, Origin="EXTERNAL")
    aws.grants.asked.clear()
    bob = aws.kms(BOB_TOKEN)
    arn = key["Arn"]
    denied = "AccessDeniedException"
    await _refused(
        aws, bob.get_parameters_for_import, denied,
        KeyId=arn, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048",
    )  # fmt: skip
    unknown = arn.rsplit("/", 1)[0] + "/0b1e2d3c-0000-4000-8000-000000000000"
    await _refused(aws, bob.delete_imported_key_material, denied, KeyId=unknown)
    await _refused(
        aws, bob.import_key_material, denied,
        KeyId=arn, ImportToken=b"kmsit1_x", EncryptedKeyMaterial=b"x" * 256,
    )  # fmt: skip
    assert [(verb, name) for _, verb, _, name in aws.grants.asked] == [
        (f"{KMIS}:create", None),
        (f"{KMIS}:delete", None),
        (f"{KMIS}:patch", None),
    ]
    assert [w.verb for w in fake.writes] == ["create"]  # CreateKey's only


async def test_only_external_keys_take_imports(aws: AwsApi, kms: Any, fake: FakeResources) -> None:
    aws.grants.allow(ALICE, f"{KMIS}:create,{KMIS}:get,{KMIS}:delete", NS)
    with pytest.raises(kms.exceptions.UnsupportedOperationException, match="EXTERNAL"):
        await aws.run(
            kms.get_parameters_for_import,
            KeyId="alias/payments", WrappingAlgorithm="RSAES_OAEP_SHA_256",
            WrappingKeySpec="RSA_2048",
        )  # fmt: skip
    with pytest.raises(kms.exceptions.UnsupportedOperationException, match="AWS_KMS"):
        await aws.run(kms.delete_imported_key_material, KeyId="alias/payments")
    with pytest.raises(kms.exceptions.UnsupportedOperationException, match="WrappingAlgorithm"):
        await aws.run(
            kms.get_parameters_for_import,
            KeyId="alias/payments", WrappingAlgorithm="RSAES_PKCS1_V1_5",
            WrappingKeySpec="RSA_2048",
        )  # fmt: skip
    assert fake.writes == []


async def test_get_parameters_for_import_times_out_without_the_operator(
    service: KeyService, tmp_path: Path, fake: FakeResources, fast_wrapping_keys: None
) -> None:
    async with serve(service, tmp_path, fake, FAST) as aws:
        kms = aws.kms()
        key = await _external_key(aws, kms)
    fake.operating = False
    async with serve(service, tmp_path, fake, IMPATIENT) as aws:
        aws.grants.allow(ALICE, f"{KMIS}:create,{KMIS}:get", NS)
        with pytest.raises(ClientError, match="import parameters") as caught:
            await _parameters(aws, _unchecked(aws), key)
        assert caught.value.response["Error"]["Code"] == "DependencyTimeoutException"
    assert [w.verb for w in fake.writes] == ["create", "create"]


async def test_bob_in_another_namespace_names_keys_by_arn(
    aws: AwsApi, kms: Any, fake: FakeResources
) -> None:
    """A caller's own namespace is where a bare key id points; an ARN names any namespace."""
    key = await _create(aws, kms)
    bob = aws.kms(BOB_TOKEN)
    for namespace in (NS, OTHER_NS):
        aws.grants.allow("system:serviceaccount:team-b:bob", "patch", namespace)
    with pytest.raises(bob.exceptions.NotFoundException):
        await aws.run(bob.disable_key, KeyId=key["KeyId"])  # team-b has no such key
    await aws.run(bob.disable_key, KeyId=key["Arn"])
    assert _record(aws, key["KeyId"]).state is KeyState.DISABLED

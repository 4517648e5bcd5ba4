"""KeyMaterialImport through the Kubernetes API only, against the real operator process.

The user's side is what a BYOK user does: read the wrapping public key from the status, wrap 32
bytes with it, put the result in a Secret, name the Secret in the spec. A "day" lasts
``OPERATOR_DAY_SECONDS`` here, so import parameters (valid one day) expire during the test.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client
from tests.integration.operator_fixtures import (
    Cmks,
    CustomObjects,
    OperatorProcess,
    wait_for,
)

from kms_operator.crypto.wrapping import WrappingAlgorithm, wrap_material

#: Long enough for a test to hand the material over within one day, short enough to watch the
#: parameters expire.
OPERATOR_DAY_SECONDS = 8
KMI = "keymaterialimports"
#: Every material and wrapped blob this module hands over, for the no-leak test at the end.
HANDED_OVER: list[bytes] = []


class Kmis(CustomObjects):
    kind, plural = "KeyMaterialImport", KMI

    def create(  # type: ignore[override]
        self, namespace: str, name: str, key: str, **spec: Any
    ) -> dict[str, Any]:
        return super().create(
            namespace, name, {"keyRef": {"name": key}, "wrappingKeySpec": "RSA_2048", **spec}
        )

    def patch_spec(self, namespace: str, name: str, **spec: Any) -> None:
        self.patch(namespace, name, {"spec": spec})

    def wait(
        self,
        namespace: str,
        name: str,
        check: Callable[[dict[str, Any]], bool],
        *,
        timeout: float = 30.0,
        what: str = "",
    ) -> dict[str, Any]:
        return self.wait_status(namespace, name, check, timeout, what)

    def wait_phase(
        self, namespace: str, name: str, phase: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        return self.wait(
            namespace,
            name,
            lambda s: s.get("phase") == phase,
            timeout=timeout,
            what=f"{namespace}/{name} to be {phase} (now {self.status(namespace, name)})",
        )

    def put_secret(self, namespace: str, name: str, wrapped: bytes) -> None:
        secret = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace),
            data={"encryptedKeyMaterial": base64.b64encode(wrapped).decode()},
        )
        self.core.create_namespaced_secret(namespace, secret)

    def hand_over(
        self,
        namespace: str,
        name: str,
        material: bytes,
        *,
        algorithm: WrappingAlgorithm = WrappingAlgorithm.RSAES_OAEP_SHA_256,
        token: str | None = None,
        **spec: Any,
    ) -> dict[str, Any]:
        """Wait for the parameters, wrap ``material``, store it in a Secret, name it."""
        status = self.wait_phase(namespace, name, "WaitingForMaterial")
        wrapped = wrap_material(algorithm, status["wrappingPublicKey"].encode(), material)
        HANDED_OVER.extend((material, wrapped))
        self.put_secret(namespace, f"{name}-material", wrapped)
        self.patch_spec(
            namespace,
            name,
            importToken=token or status["importToken"],
            encryptedKeyMaterialSecretRef={"name": f"{name}-material"},
            **spec,
        )
        return status


@pytest.fixture(scope="module")
def kmis(kube_api: client.ApiClient) -> Kmis:
    return Kmis(kube_api)


def _condition(status: dict[str, Any], kind: str = "Ready") -> dict[str, Any]:
    return next((c for c in status.get("conditions") or () if c["type"] == kind), {})


def _events(kube_api: client.ApiClient, namespace: str) -> list[Any]:
    return list(client.CoreV1Api(kube_api).list_namespaced_event(namespace).items)


def _reasons(kube_api: client.ApiClient, namespace: str, name: str) -> set[str]:
    return {e.reason for e in _events(kube_api, namespace) if e.involved_object.name == name}


def _external_key(cmks: Cmks, namespace: str, name: str = "byok") -> str:
    cmks.create(namespace, name, {"origin": "EXTERNAL"})
    return str(cmks.wait_state(namespace, name, "PendingImport")["keyId"])


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.usefixtures("operator_process")
@pytest.mark.parametrize("algorithm", list(WrappingAlgorithm))
def test_import_delete_and_reimport_the_same_material(
    cmks: Cmks,
    kmis: Kmis,
    namespace: str,
    kube_api: client.ApiClient,
    algorithm: WrappingAlgorithm,
) -> None:
    key_id = _external_key(cmks, namespace)
    material = os.urandom(32)
    kmis.create(namespace, "first", "byok", wrappingAlgorithm=algorithm.value)
    waiting = kmis.hand_over(namespace, "first", material, algorithm=algorithm)
    assert waiting["keyId"] == key_id
    assert waiting["wrappingPublicKey"].startswith("-----BEGIN PUBLIC KEY-----")
    assert waiting["importToken"] and waiting["parametersExpireAt"]
    assert _condition(waiting)["reason"] == "WaitingForMaterial"
    assert algorithm.value in _condition(waiting)["message"]

    imported = kmis.wait_phase(namespace, "first", "Imported")
    assert imported["keyVersion"] == 1 and imported["keyId"] == key_id
    assert _condition(imported)["status"] == "True"
    cmk = cmks.wait_state(namespace, "byok", "Enabled")
    assert cmk["material"]["state"] == "Enabled" and cmk["material"]["importedAt"]
    wait_for(lambda: "Imported" in _reasons(kube_api, namespace, "first"), what="Imported event")

    # Deleting the import deletes the material: the key cannot decrypt any more.
    kmis.delete(namespace, "first")
    cmks.wait_state(namespace, "byok", "PendingImport")
    wait_for(lambda: kmis.get(namespace, "first") is None, what="the KMI released")
    assert "MaterialDeleted" in _reasons(kube_api, namespace, "byok")

    # The same material brings the same version back.
    kmis.create(namespace, "again", "byok", wrappingAlgorithm=algorithm.value)
    kmis.hand_over(namespace, "again", material, algorithm=algorithm)
    assert kmis.wait_phase(namespace, "again", "Imported")["keyVersion"] == 1
    status = cmks.wait_state(namespace, "byok", "Enabled")
    assert status["keyId"] == key_id and status["currentVersion"] == 1

    # Lost material cannot be replaced by other material.
    kmis.delete(namespace, "again")
    cmks.wait_state(namespace, "byok", "PendingImport")
    kmis.create(namespace, "other", "byok", wrappingAlgorithm=algorithm.value)
    kmis.hand_over(namespace, "other", os.urandom(32), algorithm=algorithm)
    failed = kmis.wait_phase(namespace, "other", "Failed")
    assert _condition(failed)["reason"] == "IncorrectKeyMaterial"
    assert "same material" in _condition(failed)["message"]
    assert cmks.status(namespace, "byok")["state"] == "PendingImport"
    wait_for(
        lambda: "IncorrectKeyMaterial" in _reasons(kube_api, namespace, "other"),
        what="the Warning event",
    )


def test_material_shared_by_two_imports_stays_until_the_last_is_deleted(
    operator_process: OperatorProcess,
    cmks: Cmks,
    kmis: Kmis,
    namespace: str,
    kube_api: client.ApiClient,
) -> None:
    _external_key(cmks, namespace)
    material = os.urandom(32)
    for name in ("one", "two"):
        kmis.create(namespace, name, "byok")
        kmis.hand_over(namespace, name, material)
        assert kmis.wait_phase(namespace, name, "Imported")["keyVersion"] == 1
    kmis.delete(namespace, "one")
    # The deletion handler decided (and said so) before it released the object.
    wait_for(lambda: kmis.get(namespace, "one") is None, what="the first KMI released")
    kept = [e for e in _events(kube_api, namespace) if e.involved_object.name == "one"]
    assert [e.reason for e in kept if e.reason in ("MaterialKept", "MaterialDeleted")] == [
        "MaterialKept"
    ]
    assert "two" in next(e.message for e in kept if e.reason == "MaterialKept")
    assert cmks.status(namespace, "byok")["state"] == "Enabled"
    kmis.delete(namespace, "two")
    cmks.wait_state(namespace, "byok", "PendingImport")


def test_new_material_for_an_enabled_key_is_a_new_version(
    operator_process: OperatorProcess, cmks: Cmks, kmis: Kmis, namespace: str
) -> None:
    _external_key(cmks, namespace)
    for version, name in ((1, "v1"), (2, "v2")):
        kmis.create(namespace, name, "byok")
        kmis.hand_over(namespace, name, os.urandom(32))
        assert kmis.wait_phase(namespace, name, "Imported")["keyVersion"] == version
    status = cmks.wait_status(namespace, "byok", lambda s: s.get("currentVersion") == 2)
    assert status["state"] == "Enabled"


def test_wrong_token_fails(
    operator_process: OperatorProcess, cmks: Cmks, kmis: Kmis, namespace: str
) -> None:
    _external_key(cmks, namespace)
    kmis.create(namespace, "wrong", "byok")
    kmis.hand_over(namespace, "wrong", os.urandom(32), token="kmsit1_not-a-token")
    failed = kmis.wait_phase(namespace, "wrong", "Failed")
    assert _condition(failed)["reason"] == "InvalidImportToken"
    assert "spec.importToken" in _condition(failed)["message"]
    assert cmks.status(namespace, "byok")["state"] == "PendingImport"
    # Fixing the spec retries: the right token imports the same wrapped material.
    kmis.patch_spec(namespace, "wrong", importToken=failed["importToken"])
    kmis.wait_phase(namespace, "wrong", "Imported")
    cmks.wait_state(namespace, "byok", "Enabled")


def test_only_external_keys_take_material(
    operator_process: OperatorProcess,
    cmks: Cmks,
    kmis: Kmis,
    namespace: str,
    kube_api: client.ApiClient,
) -> None:
    cmks.create(namespace, "native")
    cmks.wait_state(namespace, "native", "Enabled")
    kmis.create(namespace, "refused", "native")
    failed = kmis.wait_phase(namespace, "refused", "Failed")
    assert _condition(failed)["reason"] == "KeyNotExternal"
    assert "EXTERNAL" in _condition(failed)["message"]
    assert "wrappingPublicKey" not in failed
    wait_for(lambda: "KeyNotExternal" in _reasons(kube_api, namespace, "refused"), what="event")


def test_import_waits_for_its_key(
    operator_process: OperatorProcess, cmks: Cmks, kmis: Kmis, namespace: str
) -> None:
    kmis.create(namespace, "early", "late")
    failed = kmis.wait_phase(namespace, "early", "Failed")
    assert _condition(failed)["reason"] == "KeyNotFound"
    _external_key(cmks, namespace, "late")
    kmis.wait_phase(namespace, "early", "WaitingForMaterial", timeout=30)


@pytest.mark.parametrize(
    ("valid_to", "words"),
    [
        (lambda: datetime.now(UTC) - timedelta(minutes=1), "in the future"),
        (
            lambda: datetime.now(UTC) + timedelta(seconds=366 * OPERATOR_DAY_SECONDS),
            "at most 365 days",
        ),
    ],
    ids=["past", "too-far"],
)
@pytest.mark.usefixtures("operator_process")
def test_valid_to_out_of_range_fails_naming_it(
    cmks: Cmks,
    kmis: Kmis,
    namespace: str,
    valid_to: Callable[[], datetime],
    words: str,
) -> None:
    _external_key(cmks, namespace)
    kmis.create(namespace, "dated", "byok")
    kmis.hand_over(namespace, "dated", os.urandom(32), validTo=_rfc3339(valid_to()))
    failed = kmis.wait_phase(namespace, "dated", "Failed")
    message = _condition(failed)["message"]
    assert "validTo" in message and words in message
    assert cmks.status(namespace, "byok")["state"] == "PendingImport"


def test_material_expires_at_valid_to(
    operator_process: OperatorProcess, cmks: Cmks, kmis: Kmis, namespace: str
) -> None:
    _external_key(cmks, namespace)
    kmis.create(namespace, "brief", "byok")
    valid_to = datetime.now(UTC) + timedelta(seconds=OPERATOR_DAY_SECONDS)
    kmis.hand_over(namespace, "brief", os.urandom(32), validTo=_rfc3339(valid_to))
    kmis.wait_phase(namespace, "brief", "Imported")
    assert cmks.wait_state(namespace, "byok", "Enabled")["material"]["expiresAt"]
    expired = kmis.wait_phase(namespace, "brief", "Expired", timeout=OPERATOR_DAY_SECONDS + 15)
    assert _condition(expired)["reason"] == "MaterialExpired"
    assert time.time() >= valid_to.timestamp() - 1
    cmks.wait_state(namespace, "byok", "PendingImport")


def test_parameters_expire_after_one_day(
    operator_process: OperatorProcess,
    cmks: Cmks,
    kmis: Kmis,
    namespace: str,
    kube_api: client.ApiClient,
) -> None:
    _external_key(cmks, namespace)
    kmis.create(namespace, "slow", "byok")
    waiting = kmis.wait_phase(namespace, "slow", "WaitingForMaterial")
    deadline = datetime.fromisoformat(waiting["parametersExpireAt"].replace("Z", "+00:00"))
    expired = kmis.wait_phase(namespace, "slow", "Expired", timeout=OPERATOR_DAY_SECONDS + 15)
    assert time.time() >= deadline.timestamp()
    assert _condition(expired)["reason"] == "ImportParametersExpired"
    assert "new KeyMaterialImport" in _condition(expired)["message"]
    wait_for(lambda: "ImportParametersExpired" in _reasons(kube_api, namespace, "slow"), what="ev")
    # Handing material over now is too late: the operator judges the new generation (its
    # observedGeneration says so) and the import stays Expired.
    kmis.patch_spec(
        namespace,
        "slow",
        importToken=waiting["importToken"],
        encryptedKeyMaterialSecretRef={"name": "slow-material"},
    )
    body = kmis.get(namespace, "slow")
    assert body is not None
    generation = body["metadata"]["generation"]
    assert generation > expired["observedGeneration"]
    judged = kmis.wait(
        namespace,
        "slow",
        lambda s: s.get("observedGeneration") == generation,
        what=f"observedGeneration {generation}",
    )
    assert judged["phase"] == "Expired"
    assert _condition(judged)["reason"] == "ImportParametersExpired"
    assert cmks.status(namespace, "byok")["state"] == "PendingImport"


def test_missing_secret_is_waited_for(
    operator_process: OperatorProcess, cmks: Cmks, kmis: Kmis, namespace: str
) -> None:
    _external_key(cmks, namespace)
    kmis.create(namespace, "patient", "byok")
    status = kmis.wait_phase(namespace, "patient", "WaitingForMaterial")
    material = os.urandom(32)
    wrapped = wrap_material(
        WrappingAlgorithm.RSAES_OAEP_SHA_256, status["wrappingPublicKey"].encode(), material
    )
    HANDED_OVER.extend((material, wrapped))
    kmis.patch_spec(
        namespace,
        "patient",
        importToken=status["importToken"],
        encryptedKeyMaterialSecretRef={"name": "later"},
    )
    missing = kmis.wait(
        namespace, "patient", lambda s: _condition(s).get("reason") == "MaterialSecretNotFound"
    )
    assert "later" in _condition(missing)["message"]
    kmis.put_secret(namespace, "later", wrapped)
    kmis.wait_phase(namespace, "patient", "Imported", timeout=30)


def test_restart_changes_nothing(
    operator_process: OperatorProcess,
    cmks: Cmks,
    kmis: Kmis,
    namespace: str,
    kube_api: client.ApiClient,
) -> None:
    key_id = _external_key(cmks, namespace)
    kmis.create(namespace, "done", "byok")
    kmis.create(namespace, "pending", "byok")
    kmis.hand_over(namespace, "done", os.urandom(32))
    before = kmis.wait_phase(namespace, "done", "Imported")
    waiting = kmis.wait_phase(namespace, "pending", "WaitingForMaterial")
    cmks.wait_state(namespace, "byok", "Enabled")
    imported_line = f"imported material into key {key_id}"
    assert operator_process.log_text().count(imported_line) == 1
    operator_process.restart()
    wait_for(
        lambda: "Handler 'kmi-resume' succeeded" in operator_process.log_tail(400),
        what="the resume handlers",
    )
    time.sleep(1)
    after = kmis.status(namespace, "done")
    assert (after["phase"], after["keyVersion"]) == ("Imported", before["keyVersion"])
    assert after["conditions"] == before["conditions"]
    assert operator_process.log_text().count(imported_line) == 1  # no second import
    again = kmis.status(namespace, "pending")
    assert again["importToken"] == waiting["importToken"]  # parameters issued once
    assert again["wrappingPublicKey"] == waiting["wrappingPublicKey"]
    imported_events = [
        e
        for e in _events(kube_api, namespace)
        if e.involved_object.name == "done" and e.reason == "Imported"
    ]
    assert len(imported_events) == 1


def test_material_handed_over_inline_is_imported_without_a_secret(
    operator_process: OperatorProcess, cmks: Cmks, kmis: Kmis, namespace: str
) -> None:
    key_id = _external_key(cmks, namespace)
    kmis.create(namespace, "inline", "byok")
    status = kmis.wait_phase(namespace, "inline", "WaitingForMaterial")
    assert "spec.encryptedKeyMaterial" in _condition(status)["message"]
    material = os.urandom(32)
    wrapped = wrap_material(
        WrappingAlgorithm.RSAES_OAEP_SHA_256, status["wrappingPublicKey"].encode(), material
    )
    HANDED_OVER.extend((material, wrapped))
    kmis.patch_spec(
        namespace,
        "inline",
        importToken=status["importToken"],
        encryptedKeyMaterial=base64.b64encode(wrapped).decode(),
    )
    imported = kmis.wait_phase(namespace, "inline", "Imported")
    assert (imported["keyId"], imported["keyVersion"]) == (key_id, 1)
    assert cmks.wait_state(namespace, "byok", "Enabled")["material"]["state"] == "Enabled"
    assert not kmis.core.list_namespaced_secret(namespace).items  # no Secret anywhere


def test_deleting_an_import_whose_status_names_another_key_deletes_nothing(
    operator_process: OperatorProcess,
    cmks: Cmks,
    kmis: Kmis,
    namespace: str,
    kube_api: client.ApiClient,
) -> None:
    """Issue 8, item 4: status.keyId is not proof; the key must be the import's own."""
    _external_key(cmks, namespace)
    victim_id = _external_key(cmks, namespace, "victim")
    for name, key in (("mine", "byok"), ("theirs", "victim")):
        kmis.create(namespace, name, key)
        kmis.hand_over(namespace, name, os.urandom(32))
        kmis.wait_phase(namespace, name, "Imported")
    cmks.wait_state(namespace, "victim", "Enabled")
    # Whoever may write the status subresource points "mine" at the victim's key.
    kmis.api.patch_namespaced_custom_object_status(
        "kms.cmk.dev", "v1alpha1", namespace, KMI, "mine", {"status": {"keyId": victim_id}}
    )
    kmis.delete(namespace, "mine")
    wait_for(lambda: kmis.get(namespace, "mine") is None, what="the KMI released")

    warnings = [
        e
        for e in _events(kube_api, namespace)
        if e.involved_object.name == "mine" and e.reason == "KeyNotOwned"
    ]
    assert len(warnings) == 1 and warnings[0].type == "Warning"
    assert victim_id in warnings[0].message and "no material was deleted" in warnings[0].message
    assert "MaterialDeleted" not in _reasons(kube_api, namespace, "mine")
    victim = cmks.status(namespace, "victim")
    assert victim["state"] == "Enabled" and victim["material"]["state"] == "Enabled"
    assert cmks.status(namespace, "byok")["state"] == "Enabled"  # nothing else touched either


def test_material_never_appears_in_logs_events_or_status(
    operator_process: OperatorProcess,
    cmks: Cmks,
    kmis: Kmis,
    namespace: str,
    kube_api: client.ApiClient,
) -> None:
    _external_key(cmks, namespace)
    kmis.create(namespace, "secretive", "byok")
    kmis.hand_over(namespace, "secretive", os.urandom(32))
    kmis.wait_phase(namespace, "secretive", "Imported")
    kmis.delete(namespace, "secretive")
    cmks.wait_state(namespace, "byok", "PendingImport")
    texts = [operator_process.log_text()]
    texts += [f"{e.reason} {e.message}" for e in _events(kube_api, namespace)]
    texts += [str(cmks.get(namespace, "byok"))]
    assert HANDED_OVER
    for blob in HANDED_OVER:
        forms = {
            blob.hex(),
            blob.hex().upper(),
            base64.b64encode(blob).decode(),
            base64.urlsafe_b64encode(blob).decode().rstrip("="),
            base64.b64encode(blob).decode().rstrip("="),
        }
        for text in texts:
            for form in forms:
                assert form not in text

"""DataKey through the Kubernetes API only, against the real operator process.

Each test reads the Secret the operator writes; crypto checks read the operator's store file
with the operator stopped (as test_customermasterkeys.py does), so they do not depend on the
operator's own view. Every plaintext seen is remembered, and the last test checks that none
of them reached the operator's log, its audit log or an Event.

The operator's audit lines (one per data key generated, decrypted or re-encrypted, naming the
DataKey) are also how a test knows a reconciliation happened, instead of sleeping.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.integration.operator_fixtures import (
    Cmks,
    CustomObjects,
    OperatorProcess,
    wait_for,
)

from kms_operator.errors import InvalidCiphertext
from kms_operator.keys.service import KeyService
from kms_operator.operator.datakeys.audit import OPERATOR_CALLER
from kms_operator.store.rootkey import load_root_key_file
from kms_operator.store.sqlite import SqliteKeyStore

DK = "datakeys"
SEEN_PLAINTEXTS: list[bytes] = []


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or () if c["type"] == kind), {})


def _events(kube_api: client.ApiClient, namespace: str, name: str) -> list[Any]:
    items = client.CoreV1Api(kube_api).list_namespaced_event(namespace).items
    return [e for e in items if e.involved_object.name == name]


def _event_reasons(kube_api: client.ApiClient, namespace: str, name: str) -> set[str]:
    return {e.reason for e in _events(kube_api, namespace, name)}


def _context(namespace: str, name: str, **user: str) -> dict[str, str]:
    return {**user, "kms.cmk.dev/namespace": namespace, "kms.cmk.dev/datakey": name}


class DataKeys(CustomObjects):
    kind, plural = "DataKey", DK

    def wait(
        self, namespace: str, name: str, check: Callable[[dict[str, Any]], bool],
        timeout: float = 40.0, what: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        return self.wait_status(namespace, name, check, timeout, what)

    def wait_ready(self, namespace: str, name: str, timeout: float = 40.0) -> dict[str, Any]:
        return self.wait(
            namespace, name, lambda s: _condition(s, "Ready").get("status") == "True", timeout,
            what=f"DataKey {namespace}/{name} Ready",
        )  # fmt: skip

    def wait_reason(self, namespace: str, name: str, reason: str) -> dict[str, Any]:
        return self.wait(
            namespace, name, lambda s: _condition(s, "Ready").get("reason") == reason,
            what=f"DataKey {namespace}/{name} Ready reason {reason}",
        )  # fmt: skip

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        result: dict[str, Any] = self.core.api_client.sanitize_for_serialization(secret)
        data = result.get("data") or {}
        if "plaintext" in data:
            SEEN_PLAINTEXTS.append(base64.b64decode(data["plaintext"]))
        return result


@pytest.fixture(scope="module")
def dks(kube_api: client.ApiClient) -> DataKeys:
    return DataKeys(kube_api)


def _data(secret: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


def _store_view(operator: OperatorProcess) -> tuple[KeyService, SqliteKeyStore]:
    store = SqliteKeyStore(operator.store_path, load_root_key_file(operator.root_key_file))
    return KeyService(store), store


def _audit_lines(operator: OperatorProcess, namespace: str, name: str) -> list[dict[str, Any]]:
    """The operator's own audit lines for DataKey ``namespace/name``, oldest first."""
    if not operator.audit_log.exists():
        return []
    lines = [json.loads(line) for line in operator.audit_log.read_text().splitlines() if line]
    return [line for line in lines if line.get("dataKey") == f"{namespace}/{name}"]


def _wait_audit(
    operator: OperatorProcess, namespace: str, name: str, operation: str, *, after: int = 0
) -> dict[str, Any]:
    """The first audit line of ``operation`` for the DataKey, among those after the first
    ``after`` of its lines (the proof that a reconciliation ran)."""
    found: dict[str, Any] = wait_for(
        lambda: next(
            (
                line
                for line in _audit_lines(operator, namespace, name)[after:]
                if line["operation"] == operation
            ),
            None,
        ),
        what=f"an audit line {operation} for DataKey {namespace}/{name}",
    )
    return found


def test_datakey_by_name_writes_an_owned_secret(
    operator_process: OperatorProcess,
    cmks: Cmks,
    dks: DataKeys,
    namespace: str,
    kube_api: client.ApiClient,
) -> None:
    cmks.create(namespace, "orders")
    key_id = cmks.wait_state(namespace, "orders", "Enabled")["keyId"]
    dks.create(
        namespace,
        "orders-dek",
        {
            "keyRef": {"name": "orders"},
            "encryptionContext": {"app": "orders"},
            "secretTemplate": {
                "labels": {"app.kubernetes.io/name": "orders"},
                "annotations": {"example.com/owner": "team-orders"},
            },
        },
    )
    status = dks.wait_ready(namespace, "orders-dek")
    assert status["keyId"] == key_id
    assert status["keyVersion"] == 1
    assert status["secretName"] == "orders-dek"
    assert status["observedGeneration"] == 1
    assert _condition(status, "Ready")["reason"] == "SecretReady"

    body = dks.get(namespace, "orders-dek")
    assert body is not None
    secret = dks.secret(namespace, "orders-dek")
    assert secret is not None
    assert secret["type"] == "kms.cmk.dev/data-key"
    assert secret["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "kms.cmk.dev/v1alpha1",
            "kind": "DataKey",
            "name": "orders-dek",
            "uid": body["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    annotations = secret["metadata"]["annotations"]
    assert annotations["kms.cmk.dev/key-id"] == key_id
    assert annotations["kms.cmk.dev/key-version"] == "1"
    assert annotations["example.com/owner"] == "team-orders"
    labels = secret["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "orders"
    assert labels["kms.cmk.dev/datakey"] == "orders-dek"
    assert len(_data(secret, "plaintext")) == 32  # AES_256 by default
    assert _data(secret, "ciphertext")[:4] == b"KMS1"
    wait_for(lambda: "Generated" in _event_reasons(kube_api, namespace, "orders-dek"), what="event")


def test_datakey_by_alias_without_plaintext(
    operator_process: OperatorProcess, cmks: Cmks, dks: DataKeys, namespace: str
) -> None:
    cmks.create(namespace, "payments", {"aliases": ["alias/payments"]})
    key_id = cmks.wait_state(namespace, "payments", "Enabled")["keyId"]
    dks.create(
        namespace,
        "payments-dek",
        {
            "keyRef": {"alias": "alias/payments"},
            "includePlaintext": False,
            "numberOfBytes": 48,
            "secretName": "payments-key",
        },
    )
    status = dks.wait_ready(namespace, "payments-dek")
    assert status["keyId"] == key_id and status["secretName"] == "payments-key"
    secret = dks.secret(namespace, "payments-key")
    assert secret is not None
    assert set(secret["data"]) == {"ciphertext", "ciphertextBase64"}
    assert dks.secret(namespace, "payments-dek") is None


def test_ciphertext_decrypts_to_the_plaintext_only_in_its_scope_and_survives_restart(
    operator_process: OperatorProcess, cmks: Cmks, dks: DataKeys, namespace: str
) -> None:
    cmks.create(namespace, "scoped")
    cmks.wait_state(namespace, "scoped", "Enabled")
    dks.create(
        namespace, "aes128", {"keyRef": {"name": "scoped"}, "keySpec": "AES_128",
                              "encryptionContext": {"purpose": "test"}},
    )  # fmt: skip
    dks.create(namespace, "bytes", {"keyRef": {"name": "scoped"}, "numberOfBytes": 7})
    dks.wait_ready(namespace, "aes128")
    dks.wait_ready(namespace, "bytes")
    small, odd = dks.secret(namespace, "aes128"), dks.secret(namespace, "bytes")
    assert small is not None and odd is not None
    assert len(_data(small, "plaintext")) == 16
    assert len(_data(odd, "plaintext")) == 7

    seen = len(_audit_lines(operator_process, namespace, "aes128"))
    operator_process.stop()
    try:
        service, store = _store_view(operator_process)
        try:
            blob = _data(small, "ciphertext")
            context = _context(namespace, "aes128", purpose="test")
            assert service.decrypt(blob, context).plaintext == _data(small, "plaintext")
            for wrong in (
                _context("another-namespace", "aes128", purpose="test"),
                _context(namespace, "bytes", purpose="test"),
                _context(namespace, "aes128"),
                {"purpose": "test"},
            ):
                with pytest.raises(InvalidCiphertext):
                    service.decrypt(blob, wrong)
            assert service.decrypt(
                _data(odd, "ciphertext"), _context(namespace, "bytes")
            ).plaintext == _data(odd, "plaintext")
        finally:
            store.close()
    finally:
        operator_process.start()
    # Resumed: the same data key, not a new one. The resume handler decrypted what the Secret
    # holds (its audit line says so) and wrote nothing.
    resumed = _wait_audit(operator_process, namespace, "aes128", "decrypt", after=seen)
    assert resumed["outcome"] == "allowed"
    assert [
        line["operation"] for line in _audit_lines(operator_process, namespace, "aes128")[seen:]
    ] == ["decrypt"]
    dks.wait_ready(namespace, "aes128")
    again = dks.secret(namespace, "aes128")
    assert again is not None and again["data"] == small["data"]
    assert again["metadata"]["resourceVersion"] == small["metadata"]["resourceVersion"]


def test_no_key_ref_uses_the_namespace_default_key(
    operator_process: OperatorProcess, cmks: Cmks, dks: DataKeys, namespace: str
) -> None:
    dks.create(namespace, "session", {})
    dks.create(namespace, "session-2", {})
    status = dks.wait_ready(namespace, "session")
    key = cmks.wait_state(namespace, "kms-default-datakeys", "Enabled")
    assert key["default"] is True and key["alias"] == "alias/kms/datakeys"
    body = cmks.get(namespace, "kms-default-datakeys")
    assert body is not None
    assert body["metadata"]["labels"]["kms.cmk.dev/default"] == "true"
    assert body["spec"]["aliases"] == ["alias/kms/datakeys"]
    assert status["keyId"] == key["keyId"]
    assert dks.wait_ready(namespace, "session-2")["keyId"] == key["keyId"]
    secret = dks.secret(namespace, "session")
    assert secret is not None and len(_data(secret, "plaintext")) == 32


def test_foreign_secret_with_the_same_name_is_a_conflict_and_untouched(
    operator_process: OperatorProcess,
    cmks: Cmks,
    dks: DataKeys,
    namespace: str,
    kube_api: client.ApiClient,
) -> None:
    cmks.create(namespace, "k")
    cmks.wait_state(namespace, "k", "Enabled")
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="taken", labels={"mine": "yes"}),
            string_data={"password": "hunter2"},
        ),
    )
    before = dks.secret(namespace, "taken")
    assert before is not None
    dks.create(namespace, "wants-taken", {"keyRef": {"name": "k"}, "secretName": "taken"})
    status = dks.wait_reason(namespace, "wants-taken", "SecretConflict")
    assert _condition(status, "Ready")["status"] == "False"
    assert "taken" in _condition(status, "Ready")["message"]
    wait_for(
        lambda: "SecretConflict" in _event_reasons(kube_api, namespace, "wants-taken"),
        what="the SecretConflict event",
    )
    after = dks.secret(namespace, "taken")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["data"] == before["data"] and after["type"] == "Opaque"
    assert not after["metadata"].get("ownerReferences")


def _ready_secret(
    cmks: Cmks, dks: DataKeys, namespace: str, key: str, data_key: str
) -> dict[str, Any]:
    """A new key, a DataKey on it, Ready: its Secret."""
    cmks.create(namespace, key)
    cmks.wait_state(namespace, key, "Enabled")
    dks.create(namespace, data_key, {"keyRef": {"name": key}})
    dks.wait_ready(namespace, data_key)
    secret = dks.secret(namespace, data_key)
    assert secret is not None
    return secret


def test_rotation_re_encrypts_without_changing_the_data_key(
    operator_process: OperatorProcess,
    cmks: Cmks,
    dks: DataKeys,
    namespace: str,
    kube_api: client.ApiClient,
) -> None:
    first = _ready_secret(cmks, dks, namespace, "rotating", "rotated-dek")
    cmks.patch(namespace, "rotating", {"metadata": {"annotations": {"kms.cmk.dev/rotate": "1"}}})
    cmks.wait_status(namespace, "rotating", lambda s: s["currentVersion"] == 2)
    status = dks.wait(namespace, "rotated-dek", lambda s: s.get("keyVersion") == 2)
    assert _condition(status, "Ready")["status"] == "True"
    second = dks.secret(namespace, "rotated-dek")
    assert second is not None
    assert second["metadata"]["annotations"]["kms.cmk.dev/key-version"] == "2"
    assert _data(second, "ciphertext") != _data(first, "ciphertext")
    assert _data(second, "plaintext") == _data(first, "plaintext")
    wait_for(
        lambda: "ReEncrypted" in _event_reasons(kube_api, namespace, "rotated-dek"),
        what="the ReEncrypted event",
    )

    operator_process.stop()
    try:
        service, store = _store_view(operator_process)
        try:
            opened = service.decrypt(
                _data(second, "ciphertext"), _context(namespace, "rotated-dek")
            )
            assert opened.key_version == 2
            assert opened.plaintext == _data(first, "plaintext")
        finally:
            store.close()
    finally:
        operator_process.start()


def test_disabled_key_is_refused_and_the_dependency_is_visible(
    operator_process: OperatorProcess,
    cmks: Cmks,
    dks: DataKeys,
    namespace: str,
    kube_api: client.ApiClient,
) -> None:
    cmks.create(namespace, "off", {"enabled": False})
    cmks.wait_state(namespace, "off", "Disabled")
    dks.create(namespace, "needs-off", {"keyRef": {"name": "off"}})
    status = dks.wait_reason(namespace, "needs-off", "KeyDisabled")
    assert _condition(status, "Ready")["status"] == "False"
    assert dks.secret(namespace, "needs-off") is None
    wait_for(
        lambda: "KeyDisabled" in _event_reasons(kube_api, namespace, "needs-off"),
        what="the Warning event on the DataKey",
    )
    on_key = wait_for(
        lambda: [e for e in _events(kube_api, namespace, "off") if e.reason == "KeyDisabled"],
        what="the Warning event on the key",
    )
    assert "needs-off" in on_key[0].message and on_key[0].type == "Warning"

    cmks.patch(namespace, "off", {"spec": {"enabled": True}})
    dks.wait_ready(namespace, "needs-off")
    assert dks.secret(namespace, "needs-off") is not None


def test_key_pending_deletion_is_refused(
    operator_process: OperatorProcess,
    cmks: Cmks,
    dks: DataKeys,
    namespace: str,
    kube_api: client.ApiClient,
) -> None:
    cmks.create(namespace, "doomed", {"pendingWindowDays": 30})
    cmks.wait_state(namespace, "doomed", "Enabled")
    dks.create(namespace, "needs-doomed", {"keyRef": {"name": "doomed"}})
    dks.wait_ready(namespace, "needs-doomed")
    cmks.delete(namespace, "doomed")
    cmks.wait_state(namespace, "doomed", "PendingDeletion")
    status = dks.wait_reason(namespace, "needs-doomed", "KeyPendingDeletion")
    assert "needs-doomed" in _condition(status, "Ready")["message"]
    on_key = wait_for(
        lambda: [
            e for e in _events(kube_api, namespace, "doomed") if e.reason == "KeyPendingDeletion"
        ],
        what="the audit event on the key",
    )
    assert "needs-doomed" in on_key[0].message


def test_unchanged_secret_is_not_rewritten_and_template_changes_apply(
    operator_process: OperatorProcess, cmks: Cmks, dks: DataKeys, namespace: str
) -> None:
    first = _ready_secret(cmks, dks, namespace, "steady", "steady-dek")
    seen = len(_audit_lines(operator_process, namespace, "steady-dek"))
    # A change of the DataKey's metadata makes a full reconciliation (one GET, a decrypt of
    # what the Secret holds): it finds nothing to write.
    dks.patch(namespace, "steady-dek", {"metadata": {"labels": {"poke": "1"}}})
    _wait_audit(operator_process, namespace, "steady-dek", "decrypt", after=seen)
    status = dks.wait_ready(namespace, "steady-dek")
    assert status["keyVersion"] == 1
    same = dks.secret(namespace, "steady-dek")
    assert same is not None
    assert same["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]

    dks.patch(
        namespace,
        "steady-dek",
        {"spec": {"secretTemplate": {"labels": {"tier": "gold"}}, "includePlaintext": False}},
    )
    changed = wait_for(
        lambda: (
            (s := dks.secret(namespace, "steady-dek"))
            and s["metadata"]["labels"].get("tier") == "gold"
            and s
        ),
        what="the template label on the Secret",
    )
    assert set(changed["data"]) == {"ciphertext", "ciphertextBase64"}
    assert changed["data"]["ciphertext"] == first["data"]["ciphertext"]


def test_secret_deleted_by_hand_is_regenerated_with_a_warning(
    operator_process: OperatorProcess,
    cmks: Cmks,
    dks: DataKeys,
    namespace: str,
    kube_api: client.ApiClient,
) -> None:
    first = _ready_secret(cmks, dks, namespace, "lost", "lost-dek")
    client.CoreV1Api(kube_api).delete_namespaced_secret("lost-dek", namespace)
    # Any change of the DataKey (or a restart, or the periodic full check) notices.
    dks.patch(namespace, "lost-dek", {"metadata": {"labels": {"poke": "1"}}})
    again = wait_for(lambda: dks.secret(namespace, "lost-dek"), what="the Secret back")
    assert again["data"]["plaintext"] != first["data"]["plaintext"]
    wait_for(
        lambda: "Regenerated" in _event_reasons(kube_api, namespace, "lost-dek"),
        what="the Regenerated warning",
    )


def test_every_data_key_operation_is_audited_naming_the_datakey(
    operator_process: OperatorProcess, cmks: Cmks, dks: DataKeys, namespace: str
) -> None:
    _ready_secret(cmks, dks, namespace, "audited", "audited-dek")
    key_id = cmks.status(namespace, "audited")["keyId"]
    generated = _wait_audit(operator_process, namespace, "audited-dek", "generate-data-key")
    assert generated["caller"] == OPERATOR_CALLER == "system:kms-operator"
    assert (generated["outcome"], generated["namespace"], generated["keyName"]) == (
        "allowed",
        namespace,
        "audited",
    )
    assert (generated["keyId"], generated["keyVersion"]) == (key_id, 1)

    seen = len(_audit_lines(operator_process, namespace, "audited-dek"))
    cmks.patch(namespace, "audited", {"metadata": {"annotations": {"kms.cmk.dev/rotate": "1"}}})
    dks.wait(namespace, "audited-dek", lambda s: s.get("keyVersion") == 2)
    moved = _wait_audit(operator_process, namespace, "audited-dek", "re-encrypt", after=seen)
    assert (moved["outcome"], moved["keyId"], moved["keyVersion"]) == ("allowed", key_id, 2)
    assert moved["source"] == {
        "namespace": namespace,
        "keyName": "audited",
        "keyId": key_id,
        "keyVersion": 1,
    }
    operations = [x["operation"] for x in _audit_lines(operator_process, namespace, "audited-dek")]
    assert operations.count("generate-data-key") == 1  # one data key, ever


def test_a_blob_of_another_namespaces_key_is_invalid_ciphertext(
    operator_process: OperatorProcess,
    cmks: Cmks,
    dks: DataKeys,
    namespace: str,
    kube_api: client.ApiClient,
) -> None:
    core = client.CoreV1Api(kube_api)
    other = f"{namespace}-other"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        cmks.create(other, "theirs")
        cmks.wait_state(other, "theirs", "Enabled")
        first = _ready_secret(cmks, dks, namespace, "local", "dek")
        local_id = cmks.status(namespace, "local")["keyId"]
        # A blob sealed under the other namespace's key with this DataKey's context (anyone
        # with encrypt on that key can make one), put into this DataKey's Secret.
        operator_process.stop()
        try:
            service, store = _store_view(operator_process)
            try:
                blob = service.encrypt(
                    other,
                    "theirs",
                    b"chosen by someone else" + bytes(10),
                    _context(namespace, "dek"),
                ).ciphertext_blob
            finally:
                store.close()
        finally:
            operator_process.start()
        # The resume handler has checked the Secret (still the DataKey's own data key).
        assert _wait_audit(operator_process, namespace, "dek", "decrypt", after=1)["outcome"] == (
            "allowed"
        )
        seen = len(_audit_lines(operator_process, namespace, "dek"))
        secret = dks.secret(namespace, "dek")
        assert secret is not None and secret["data"] == first["data"]
        core.patch_namespaced_secret(
            "dek", namespace, {"data": {"ciphertext": base64.b64encode(blob).decode()}}
        )
        dks.patch(namespace, "dek", {"metadata": {"labels": {"poke": "1"}}})

        status = dks.wait_reason(namespace, "dek", "InvalidCiphertext")
        assert status["keyId"] == local_id  # never the other namespace's key
        assert _condition(status, "Ready")["status"] == "False"
        left = dks.secret(namespace, "dek")
        assert left is not None and _data(left, "ciphertext") == blob  # left as it is
        refused = _wait_audit(operator_process, namespace, "dek", "decrypt", after=seen)
        assert (refused["outcome"], refused["errorCode"]) == ("error", "InvalidCiphertext")
        assert refused["keyId"] is None
        assert not [e for e in _events(kube_api, other, "theirs") if "dek" in (e.message or "")]
    finally:
        core.delete_namespace(other)


def test_no_plaintext_in_the_operator_log_nor_in_events(
    operator_process: OperatorProcess, kube_api: client.ApiClient
) -> None:
    assert len(SEEN_PLAINTEXTS) >= 5, "the tests above should have seen data keys"
    log = operator_process.log_text()
    events = client.CoreV1Api(kube_api).list_event_for_all_namespaces().items
    audit = operator_process.audit_log.read_text()
    assert '"dataKey"' in audit
    texts = [log, audit, *(f"{e.reason} {e.message}" for e in events)]
    for plaintext in SEEN_PLAINTEXTS:
        for form in (
            base64.b64encode(plaintext).decode(),
            plaintext.hex(),
            plaintext.hex().upper(),
        ):
            if len(form) < 12:
                continue  # too short to be meaningful (a 7-byte key's base64 is 12)
            assert not any(form in text for text in texts), "a plaintext data key leaked"

"""The data-plane API of the real ``kms-operator run`` process, against the real control plane.

Callers are real ServiceAccounts with tokens from the TokenRequest API, made for the KMS's
audience ``kms.cmk.dev``; their rights come from real Roles and RoleBindings (TokenReview and
SubjectAccessReview are the API server's). Keys are CustomerMasterKey objects created through
the Kubernetes API.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.integration.accounts import KMS_AUDIENCE, service_account, service_account_token
from tests.integration.operator_fixtures import Cmks, OperatorProcess

from kms_operator.errors import InvalidCiphertext

pytestmark = pytest.mark.integration

GROUP = "kms.cmk.dev"


# -- helpers ---------------------------------------------------------------------------------


class Api:
    def __init__(self, operator: OperatorProcess) -> None:
        self.url = operator.api_url
        self.context = ssl.create_default_context(cafile=str(operator.ca_file))
        self.calls = 0

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        self.calls += 1
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(  # noqa: S310
            self.url + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers=headers,
        )
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=10) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def encrypt(
        self, token: str, namespace: str, key: str, plaintext: bytes, **body: Any
    ) -> tuple[int, dict[str, Any]]:
        return self.call(
            "POST",
            f"/v1/namespaces/{namespace}/keys/{key}/encrypt",
            {"plaintext": base64.b64encode(plaintext).decode(), **body},
            token,
        )

    def decrypt(self, token: str | None, blob: str, **body: Any) -> tuple[int, dict[str, Any]]:
        return self.call("POST", "/v1/decrypt", {"ciphertextBlob": blob, **body}, token)


def _audit_lines(operator: OperatorProcess) -> list[dict[str, Any]]:
    if not operator.audit_log.exists():
        return []
    return [json.loads(line) for line in operator.audit_log.read_text().splitlines() if line]


def _code(answer: dict[str, Any]) -> str:
    return str(answer["error"]["code"])


@pytest.fixture
def api(operator_process: OperatorProcess) -> Api:
    return Api(operator_process)


@pytest.fixture
def key(operator_process: OperatorProcess, cmks: Cmks, namespace: str) -> str:
    cmks.create(namespace, "app-key", {"aliases": ["alias/app"]})
    cmks.wait_state(namespace, "app-key", "Enabled")
    return "app-key"


# -- tests -----------------------------------------------------------------------------------


def test_encrypt_allowed_decrypt_denied_by_rbac(
    api: Api, kube_api: client.ApiClient, namespace: str, key: str
) -> None:
    token = service_account(kube_api, namespace, "encrypt-only", ["encrypt"])
    status, sealed = api.encrypt(token, namespace, key, b"hello")
    assert status == 200, sealed
    status, answer = api.decrypt(token, sealed["ciphertextBlob"])
    assert status == 403 and _code(answer) == "AccessDenied"
    # The alias route authorizes against the same CMK name.
    status, answer = api.call(
        "POST",
        f"/v1/namespaces/{namespace}/aliases/app/encrypt",
        {"plaintext": base64.b64encode(b"x").decode()},
        token,
    )
    assert status == 200, answer
    both = service_account(kube_api, namespace, "both", ["encrypt", "decrypt"])
    status, opened = api.decrypt(both, sealed["ciphertextBlob"])
    assert status == 200 and base64.b64decode(opened["plaintext"]) == b"hello"


def test_no_token_is_401_and_a_bad_token_too(api: Api, namespace: str, key: str) -> None:
    status, answer = api.encrypt("", namespace, key, b"x")
    assert status == 401 and _code(answer) == "Unauthenticated"
    status, answer = api.encrypt("not-a-real-token", namespace, key, b"x")
    assert status == 401 and _code(answer) == "Unauthenticated"
    # Shaped like a ServiceAccount token, so TokenReview is asked, and refuses it.
    forged = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    status, answer = api.encrypt(forged, namespace, key, b"x")
    assert status == 401 and _code(answer) == "Unauthenticated"


def test_a_token_for_the_api_servers_audience_is_refused(
    api: Api, kube_api: client.ApiClient, namespace: str, key: str
) -> None:
    """A token handed to the KMS must not be one that also works against the API server."""
    for_api_server = service_account(kube_api, namespace, "replayer", ["encrypt"], audiences=[])
    # It is a valid token, for the Kubernetes API server...
    review = client.AuthenticationV1Api(kube_api).create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token=for_api_server))
    )
    assert review.status.authenticated is True
    # ...so the KMS refuses it,
    status, answer = api.encrypt(for_api_server, namespace, key, b"x")
    assert status == 401 and _code(answer) == "Unauthenticated", answer
    for_other = service_account_token(kube_api, namespace, "replayer", ["vault"])
    status, answer = api.encrypt(for_other, namespace, key, b"x")
    assert status == 401 and _code(answer) == "Unauthenticated", answer
    # ...and accepts the same ServiceAccount's token for its own audience.
    for_kms = service_account_token(kube_api, namespace, "replayer", [KMS_AUDIENCE])
    status, answer = api.encrypt(for_kms, namespace, key, b"x")
    assert status == 200, answer
    for_both = service_account_token(kube_api, namespace, "replayer", ["vault", KMS_AUDIENCE])
    status, answer = api.encrypt(for_both, namespace, key, b"x")
    assert status == 200, answer


def test_token_of_another_namespace_is_403(
    api: Api, kube_api: client.ApiClient, namespace: str, key: str
) -> None:
    other = f"t-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(kube_api).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=other))
    )
    # Full rights in its own namespace, none in ours.
    token = service_account(kube_api, other, "outsider", ["encrypt", "decrypt"])
    status, answer = api.encrypt(token, namespace, key, b"x")
    assert status == 403 and _code(answer) == "AccessDenied"


def test_disabled_key_is_409(
    api: Api, kube_api: client.ApiClient, cmks: Cmks, namespace: str, key: str
) -> None:
    token = service_account(kube_api, namespace, "user", ["encrypt", "decrypt"])
    cmks.patch(namespace, key, {"spec": {"enabled": False}})
    cmks.wait_state(namespace, key, "Disabled")
    status, answer = api.encrypt(token, namespace, key, b"x")
    assert status == 409 and _code(answer) == "KeyDisabled", answer


def test_pending_deletion_is_409_and_audited(
    *,
    api: Api,
    kube_api: client.ApiClient,
    cmks: Cmks,
    namespace: str,
    key: str,
    operator_process: OperatorProcess,
) -> None:
    token = service_account(kube_api, namespace, "user", ["encrypt", "decrypt"])
    status, sealed = api.encrypt(token, namespace, key, b"still needed")
    assert status == 200
    key_id = cmks.status(namespace, key)["keyId"]
    cmks.delete(namespace, key)
    cmks.wait_state(namespace, key, "PendingDeletion")
    status, answer = api.decrypt(token, sealed["ciphertextBlob"])
    assert status == 409 and _code(answer) == "KeyPendingDeletion", answer
    status, answer = api.encrypt(token, namespace, key, b"x")
    assert status == 409 and _code(answer) == "KeyPendingDeletion", answer
    refused = [
        line
        for line in _audit_lines(operator_process)
        if line["keyId"] == key_id and line["errorCode"] == "KeyPendingDeletion"
    ]
    assert [(x["operation"], x["outcome"]) for x in refused] == [
        ("decrypt", "error"),
        ("encrypt", "error"),
    ]
    assert refused[0]["caller"] == f"system:serviceaccount:{namespace}:user"
    assert refused[0]["namespace"] == namespace and refused[0]["keyName"] == key


def test_tampered_blob_and_wrong_context_give_the_same_invalid_ciphertext(
    api: Api, kube_api: client.ApiClient, namespace: str, key: str
) -> None:
    token = service_account(kube_api, namespace, "user", ["encrypt", "decrypt"])
    status, sealed = api.encrypt(token, namespace, key, b"x", encryptionContext={"a": "1"})
    assert status == 200
    blob = bytearray(base64.b64decode(sealed["ciphertextBlob"]))
    blob[-3] ^= 0x01
    tampered = api.decrypt(
        token, base64.b64encode(bytes(blob)).decode(), encryptionContext={"a": "1"}
    )
    wrong_context = api.decrypt(token, sealed["ciphertextBlob"], encryptionContext={"a": "2"})
    for status, answer in (tampered, wrong_context):
        assert status == 400
        assert answer == {
            "error": {"code": "InvalidCiphertext", "message": InvalidCiphertext.MESSAGE}
        }


def test_audit_lines_match_calls_one_to_one(
    api: Api,
    kube_api: client.ApiClient,
    namespace: str,
    key: str,
    operator_process: OperatorProcess,
) -> None:
    token = service_account(kube_api, namespace, "encrypt-only", ["encrypt"])
    before = len(_audit_lines(operator_process))
    secret = b"never in the audit log"
    expected: list[tuple[str, str, str | None]] = []
    status, sealed = api.encrypt(token, namespace, key, secret)
    assert status == 200
    expected.append(("encrypt", "allowed", None))
    api.decrypt(token, sealed["ciphertextBlob"])
    expected.append(("decrypt", "denied", "AccessDenied"))
    api.decrypt(None, sealed["ciphertextBlob"])
    expected.append(("decrypt", "denied", "Unauthenticated"))
    api.call("POST", "/v1/random", {"numberOfBytes": 8}, token)
    expected.append(("random", "allowed", None))
    api.encrypt(token, namespace, "missing-key", secret)
    expected.append(("encrypt", "error", "NotFound"))
    api.call("POST", "/v1/decrypt", {"ciphertextBlob": "%%%"}, token)
    expected.append(("decrypt", "error", "InvalidRequest"))
    api.call("GET", "/healthz")  # not audited
    lines = _audit_lines(operator_process)[before:]
    assert [(x["operation"], x["outcome"], x["errorCode"]) for x in lines] == expected
    text = operator_process.audit_log.read_text()
    assert base64.b64encode(secret).decode() not in text
    assert sealed["ciphertextBlob"] not in text
    assert token not in text
    assert lines[0]["keyVersion"] == 1 and lines[0]["keyName"] == key
    assert lines[0]["caller"] == f"system:serviceaccount:{namespace}:encrypt-only"


def test_kmsctl_blob_decrypts_after_rotation(
    *,
    api: Api,
    kube_api: client.ApiClient,
    cmks: Cmks,
    namespace: str,
    key: str,
    operator_process: OperatorProcess,
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(service_account(kube_api, namespace, "cli", ["encrypt", "decrypt"]))
    connection = [
        "--server", operator_process.api_url, "--ca-file", str(operator_process.ca_file),
        "--token-file", str(token_file),
    ]  # fmt: skip
    plaintext = bytes(range(256))

    def kmsctl(*args: str, stdin: bytes) -> bytes:
        done = subprocess.run(
            [sys.executable, "-m", "kms_operator.cli.kmsctl", *args, *connection],
            input=stdin,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout

    blob = kmsctl("encrypt", "-n", namespace, "--key", "alias/app", "--context", "k=v",
                  stdin=plaintext)  # fmt: skip
    before = cmks.status(namespace, key)["currentVersion"]
    cmks.patch(namespace, key, {"metadata": {"annotations": {f"{GROUP}/rotate": uuid.uuid4().hex}}})
    cmks.wait_status(namespace, key, lambda s: s.get("currentVersion", 0) > before, what="rotation")
    newer = kmsctl("encrypt", "-n", namespace, "--key", key, stdin=b"after")
    assert int.from_bytes(newer[20:24], "big") == before + 1
    assert kmsctl("decrypt", "--context", "k=v", stdin=blob) == plaintext


def test_kmsctl_mints_a_token_for_a_service_account_from_a_kubeconfig(
    *,
    api: Api,
    kube_api: client.ApiClient,
    namespace: str,
    key: str,
    operator_process: OperatorProcess,
) -> None:
    service_account(kube_api, namespace, "person", ["encrypt", "decrypt"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KMS_", "KUBECONFIG"))}
    connection = [
        "--server", operator_process.api_url, "--ca-file", str(operator_process.ca_file),
        "--kubeconfig", str(operator_process.plane.kubeconfig),
    ]  # fmt: skip

    def kmsctl(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "kms_operator.cli.kmsctl", *args, *connection],
            input=stdin, capture_output=True, timeout=60, check=False, env=env,
        )  # fmt: skip

    sealed = kmsctl("encrypt", "-n", namespace, "--key", key,
                    "--service-account", f"{namespace}/person", stdin=b"minted")  # fmt: skip
    assert sealed.returncode == 0, sealed.stderr.decode()
    opened = kmsctl("decrypt", "--service-account", f"{namespace}/person", stdin=sealed.stdout)
    assert opened.returncode == 0 and opened.stdout == b"minted", opened.stderr.decode()
    lines = [x for x in _audit_lines(operator_process) if x["namespace"] == namespace]
    assert lines[-1]["caller"] == f"system:serviceaccount:{namespace}:person"
    # A token for another audience, as the KMS sees it: refused.
    other = kmsctl("random", "--number-of-bytes", "4", "--audience", "not-the-kms",
                   "--service-account", f"{namespace}/person")  # fmt: skip
    assert other.returncode == 1 and b"error: Unauthenticated: " in other.stderr
    missing = kmsctl("random", "--number-of-bytes", "4",
                     "--service-account", f"{namespace}/nobody")  # fmt: skip
    assert missing.returncode == 1
    assert b"error: TokenRequestFailed: " in missing.stderr and b"404" in missing.stderr

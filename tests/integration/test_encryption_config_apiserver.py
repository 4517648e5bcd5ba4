"""The encryption-at-rest harness, proven with a provider built into kube-apiserver (aescbc):
etcd read behind the API server's back holds ciphertext, the API serves plaintext, and a
restarted kube-apiserver (cold caches, the config file read again) reads what etcd keeps."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from tests.integration.encryption_fixtures import (
    IDENTITY_PROVIDER,
    admin_client,
    aescbc_provider,
    encrypted_control_plane,
    etcd_value,
    secret_key,
    write_encryption_config,
)

from kms_operator.devcluster.controlplane import LocalControlPlane

pytestmark = pytest.mark.integration

KEY_NAME = "harness-key"
PREFIX = f"k8s:enc:aescbc:v1:{KEY_NAME}:".encode()


@pytest.fixture(scope="module")
def aescbc_key() -> bytes:
    return os.urandom(32)


@pytest.fixture(scope="module")
def encryption_config(tmp_path_factory: pytest.TempPathFactory, aescbc_key: bytes) -> Path:
    path = tmp_path_factory.mktemp("encryption") / "encryption-config.yaml"
    return write_encryption_config(path, [aescbc_provider(KEY_NAME, aescbc_key), IDENTITY_PROVIDER])


@pytest.fixture(scope="module")
def plane(encryption_config: Path) -> Iterator[LocalControlPlane]:
    with encrypted_control_plane(encryption_config) as started:
        yield started


@pytest.fixture
def core(plane: LocalControlPlane) -> Iterator[client.CoreV1Api]:
    with admin_client(plane) as api:
        yield client.CoreV1Api(api)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> str:
    name = f"enc-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def _plaintext() -> bytes:
    return f"plaintext-{uuid.uuid4().hex}".encode()


def _create_secret(core: client.CoreV1Api, namespace: str, name: str, value: bytes) -> None:
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            data={"password": base64.b64encode(value).decode()},
        ),
    )


def _secret_value(core: client.CoreV1Api, namespace: str, name: str) -> bytes:
    secret = core.read_namespaced_secret(name, namespace)
    return base64.b64decode(secret.data["password"])


def test_a_secret_is_ciphertext_in_etcd_and_plaintext_through_the_api(
    plane: LocalControlPlane, core: client.CoreV1Api, namespace: str
) -> None:
    plaintext = _plaintext()
    _create_secret(core, namespace, "db", plaintext)

    raw = etcd_value(plane, secret_key(namespace, "db"))
    assert raw is not None
    assert raw.startswith(PREFIX), raw[:40]
    assert plaintext not in raw
    assert base64.b64encode(plaintext) not in raw
    assert _secret_value(core, namespace, "db") == plaintext

    # The reader sees plaintext where there is some: ConfigMaps are not encrypted.
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="clear"), data={"value": plaintext.decode()}
        ),
    )
    clear = etcd_value(plane, f"/registry/configmaps/{namespace}/clear")
    assert clear is not None
    assert plaintext in clear
    assert not clear.startswith(b"k8s:enc:")
    assert etcd_value(plane, secret_key(namespace, "absent")) is None


def test_a_restarted_apiserver_reads_what_etcd_kept_under_its_new_config(
    plane: LocalControlPlane,
    core: client.CoreV1Api,
    namespace: str,
    encryption_config: Path,
    aescbc_key: bytes,
) -> None:
    before = _plaintext()
    _create_secret(core, namespace, "before", before)
    server = plane.server

    # identity now writes; aescbc still reads what it wrote.
    write_encryption_config(
        encryption_config, [IDENTITY_PROVIDER, aescbc_provider(KEY_NAME, aescbc_key)]
    )
    plane.restart_apiserver()

    assert plane.server == server
    with admin_client(plane) as api:
        restarted = client.CoreV1Api(api)
        assert _secret_value(restarted, namespace, "before") == before
        after = _plaintext()
        _create_secret(restarted, namespace, "after", after)
    raw_before = etcd_value(plane, secret_key(namespace, "before"))
    raw_after = etcd_value(plane, secret_key(namespace, "after"))
    assert raw_before is not None
    assert raw_before.startswith(PREFIX)
    assert raw_after is not None
    assert not raw_after.startswith(b"k8s:enc:")
    assert after in raw_after

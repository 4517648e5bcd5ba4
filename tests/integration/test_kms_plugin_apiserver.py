"""kube-apiserver encrypting Secrets through the real ``kms-operator kms-plugin serve``.

The plugin runs as a process with its own store and root key (a node directory under tmp) on
a unix socket; kube-apiserver runs with the shipped EncryptionConfiguration
(``manifests/kms-plugin/encryption-configuration.yaml``: a kms v2 provider, then identity), its
endpoint moved to that socket. etcd is read behind kube-apiserver's back with etcdctl; the key
id of a stored value is the ``keyID`` field of its ``EncryptedObject``.

kube-apiserver asks the plugin's ``Status`` every minute, and on a ``/healthz`` (or
``/readyz``) request once the last answer is older than 20 s (3 s after a failure): these are
constants of k8s.io/apiserver (``encryptionconfig/config.go``), no flag shortens them. The
tests poll ``/healthz/kms-providers`` to get the new key id noticed within about 20 s.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from kubernetes import client
from tests.integration.encryption_fixtures import (
    IDENTITY_PROVIDER,
    admin_client,
    apiserver_health,
    encrypted_control_plane,
    etcd_value,
    etcd_values,
    kms_v2_provider,
    secret_key,
    stored_encrypted_object,
    write_encryption_config,
)
from tests.support.kmsplugin import PluginProcess

from kms_operator.devcluster.controlplane import LocalControlPlane
from kms_operator.kmsplugin import protocol

pytestmark = pytest.mark.integration

PROVIDER = "kms-operator"
SHIPPED_CONFIG = (
    Path(__file__).resolve().parents[2] / "manifests/kms-plugin/encryption-configuration.yaml"
)
PREFIX = f"k8s:enc:kms:v2:{PROVIDER}:".encode()
#: The one health check of every kms v2 provider when no kms v1 provider is configured.
HEALTH_CHECK = "kms-providers"

T = TypeVar("T")


def _wait(what: str, probe: Callable[[], T | None], timeout: float = 90.0) -> T:
    """Poll ``probe`` (every half second) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


def _keys(node: PluginProcess, command: str, *args: str) -> None:
    done = node.keys(command, *args)
    assert done.returncode == 0, done.stderr


def _key_id(node: PluginProcess) -> str:
    """The key id the plugin's Status reports."""
    with protocol.connect(node.socket_path) as client_of_node:
        return client_of_node.status().key_id


@contextlib.contextmanager
def _serving(node: PluginProcess) -> Iterator[PluginProcess]:
    node.start()
    try:
        with protocol.connect(node.socket_path) as client_of_node:
            assert client_of_node.status().healthz == protocol.HEALTHZ_OK
        yield node
    finally:
        node.stop()


def _rotate(plugin: PluginProcess) -> str:
    """``keys rotate`` while the plugin serves; the new key id once its Status reports it."""
    old_key_id = _key_id(plugin)
    _keys(plugin, "rotate")

    def rotated() -> str | None:
        key_id = _key_id(plugin)
        return key_id if key_id != old_key_id else None

    return _wait("Status to report the rotated key id", rotated, timeout=30)


def _plaintext() -> bytes:
    return f"plaintext-{uuid.uuid4().hex}".encode()


def _put_secret(core: client.CoreV1Api, namespace: str, name: str, value: bytes) -> None:
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name),
        data={"password": base64.b64encode(value).decode()},
    )
    try:
        core.create_namespaced_secret(namespace, body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        core.replace_namespaced_secret(name, namespace, body)


def _secret_value(core: client.CoreV1Api, namespace: str, name: str) -> bytes:
    return base64.b64decode(core.read_namespaced_secret(name, namespace).data["password"])


def _stored_key_id(plane: LocalControlPlane, namespace: str, name: str) -> str:
    raw = etcd_value(plane, secret_key(namespace, name))
    assert raw is not None, f"no {secret_key(namespace, name)} in etcd"
    return stored_encrypted_object(raw, PROVIDER).key_id


def _new_namespace(core: client.CoreV1Api) -> str:
    name = f"kms-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def _wait_until_writes_use(
    plane: LocalControlPlane, core: client.CoreV1Api, namespace: str, key_id: str
) -> None:
    """Poll until kube-apiserver writes under ``key_id``: each /healthz past the 20 s TTL of
    the last Status answer makes it call Status again and take a new DEK seed on a new key id."""

    def written_under_key_id() -> bool:
        apiserver_health(plane, HEALTH_CHECK)
        _put_secret(core, namespace, "probe", _plaintext())
        return _stored_key_id(plane, namespace, "probe") == key_id

    _wait(f"kube-apiserver to write under {key_id}", written_under_key_id)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Short: a unix socket path must stay under 108 bytes.
    return tmp_path_factory.mktemp("kms")


@pytest.fixture(scope="module")
def plugin(work: Path) -> Iterator[PluginProcess]:
    node = PluginProcess(work / "node")
    _keys(node, "create")
    with _serving(node):
        yield node


@pytest.fixture(scope="module")
def plane(work: Path, plugin: PluginProcess) -> Iterator[LocalControlPlane]:
    # The shipped example, only its endpoint moved to the test's socket.
    document = yaml.safe_load(SHIPPED_CONFIG.read_text())
    providers = document["resources"][0]["providers"]
    assert providers == [
        kms_v2_provider(PROVIDER, Path("/var/run/kms-operator/kms.sock")),
        IDENTITY_PROVIDER,
    ]
    providers[0]["kms"]["endpoint"] = f"unix://{plugin.socket_path}"
    config = work / "encryption-config.yaml"
    config.write_text(yaml.safe_dump(document))
    with encrypted_control_plane(config) as started:
        yield started


@pytest.fixture
def core(plane: LocalControlPlane) -> Iterator[client.CoreV1Api]:
    with admin_client(plane) as api:
        yield client.CoreV1Api(api)


def test_secrets_are_kms_v2_ciphertext_in_etcd_and_plaintext_through_kubectl(
    plane: LocalControlPlane, core: client.CoreV1Api, plugin: PluginProcess
) -> None:
    namespaces = [_new_namespace(core), _new_namespace(core)]
    plaintexts = {(ns, f"s{i}"): _plaintext() for ns in namespaces for i in range(3)}
    for (ns, name), value in plaintexts.items():
        _put_secret(core, ns, name, value)
    key_id = _key_id(plugin)

    for (ns, name), value in plaintexts.items():
        raw = etcd_value(plane, secret_key(ns, name))
        assert raw is not None
        assert raw.startswith(PREFIX), raw[:40]
        assert value not in raw
        assert base64.b64encode(value) not in raw
        stored = stored_encrypted_object(raw, PROVIDER)
        assert stored.key_id == key_id
        assert stored.encrypted_dek_source
        assert len(stored.encrypted_dek_source) < 1024
        got = json.loads(plane.kubectl("get", "secret", name, "-n", ns, "-o", "json").stdout)
        assert base64.b64decode(got["data"]["password"]) == value


def test_after_a_rotation_a_no_op_rewrite_leaves_the_new_key_id_in_etcd(
    plane: LocalControlPlane, core: client.CoreV1Api, plugin: PluginProcess
) -> None:
    namespace = _new_namespace(core)
    plaintexts = {f"s{i}": _plaintext() for i in range(5)}
    for name, value in plaintexts.items():
        _put_secret(core, namespace, name, value)
    old_key_id = _key_id(plugin)
    assert {_stored_key_id(plane, namespace, name) for name in plaintexts} == {old_key_id}

    new_key_id = _rotate(plugin)
    _wait_until_writes_use(plane, core, namespace, new_key_id)
    # Rotation alone rewrites nothing: the Secrets written before keep the old key id.
    assert {_stored_key_id(plane, namespace, name) for name in plaintexts} == {old_key_id}

    listed = plane.kubectl("get", "secrets", "-A", "-o", "json").stdout
    plane.kubectl("replace", "-f", "-", input=listed)

    stored = etcd_values(plane, "/registry/secrets/")
    assert stored
    assert {stored_encrypted_object(raw, PROVIDER).key_id for raw in stored.values()} == {
        new_key_id
    }
    for name, value in plaintexts.items():
        assert _secret_value(core, namespace, name) == value


def test_a_restarted_apiserver_reads_every_secret_under_old_and_new_key_ids(
    plane: LocalControlPlane, plugin: PluginProcess
) -> None:
    plaintexts: dict[tuple[str, str], bytes] = {}
    with admin_client(plane) as api:
        core = client.CoreV1Api(api)
        namespace = _new_namespace(core)
        for i in range(10):
            plaintexts[(namespace, f"before-{i}")] = value = _plaintext()
            _put_secret(core, namespace, f"before-{i}", value)
        before_key_id = _key_id(plugin)
        after_key_id = _rotate(plugin)
        _wait_until_writes_use(plane, core, namespace, after_key_id)
        for i in range(10):
            plaintexts[(namespace, f"after-{i}")] = value = _plaintext()
            _put_secret(core, namespace, f"after-{i}", value)
    stored_ids = {_stored_key_id(plane, ns, name) for ns, name in plaintexts}
    assert stored_ids == {before_key_id, after_key_id}

    plane.restart_apiserver()

    with admin_client(plane) as api:
        core = client.CoreV1Api(api)
        listed = core.list_secret_for_all_namespaces()
        by_name = {(s.metadata.namespace, s.metadata.name): s for s in listed.items}
        assert len(by_name) == len(etcd_values(plane, "/registry/secrets/"))
        for (ns, name), value in plaintexts.items():
            assert base64.b64decode(by_name[(ns, name)].data["password"]) == value
            assert _secret_value(core, ns, name) == value


def test_healthz_reports_the_kms_provider_failing_while_the_plugin_is_stopped(
    plane: LocalControlPlane, plugin: PluginProcess
) -> None:
    assert apiserver_health(plane, HEALTH_CHECK) == (200, "ok")

    plugin.stop()
    try:

        def failing() -> tuple[int, str] | None:
            status, body = apiserver_health(plane)
            return (status, body) if status != 200 else None

        status, body = _wait("/healthz to fail", failing)
        assert status == 500
        assert f"[-]{HEALTH_CHECK} failed" in body
        assert "[+]etcd ok" in body
        # The check alone says which provider fails and why (the socket is gone).
        status, reason = apiserver_health(plane, HEALTH_CHECK)
        assert status == 500
        assert "kms-provider-0" in reason
        assert str(plugin.socket_path) in reason
    finally:
        plugin.start()

    _wait("/healthz to recover", lambda: apiserver_health(plane)[0] == 200)
    assert apiserver_health(plane, HEALTH_CHECK) == (200, "ok")


def test_two_plugins_with_the_same_imported_material_decrypt_each_others_writes(
    work: Path,
) -> None:
    shared_key_id = str(uuid.uuid4())
    material = work / "shared-material.bin"
    material.write_bytes(os.urandom(32))
    material.chmod(0o600)
    node_a, node_b = PluginProcess(work / "shared-a"), PluginProcess(work / "shared-b")
    for node in (node_a, node_b):
        _keys(node, "create", "--origin", "EXTERNAL", "--key-id", shared_key_id)
        _keys(node, "import", "--material-file", str(material))
    config = work / "shared-encryption-config.yaml"
    plaintexts = {f"s{i}": _plaintext() for i in range(5)}

    with _serving(node_a), _serving(node_b):
        # Over the sockets: what one plugin encrypts, the other decrypts.
        assert _key_id(node_a) == _key_id(node_b) == f"{shared_key_id}:1"
        for writer, reader in ((node_a, node_b), (node_b, node_a)):
            with protocol.connect(writer.socket_path) as writer_client:
                encrypted = writer_client.encrypt(b"seed of a DEK", uid=str(uuid.uuid4()))
            with protocol.connect(reader.socket_path) as reader_client:
                decrypted = reader_client.decrypt(
                    encrypted.ciphertext,
                    encrypted.key_id,
                    uid=str(uuid.uuid4()),
                    annotations=dict(encrypted.annotations),
                )
            assert decrypted.plaintext == b"seed of a DEK"

        # Through kube-apiserver: written on plugin A, read after a restart on plugin B alone.
        write_encryption_config(
            config, [kms_v2_provider(PROVIDER, node_a.socket_path), IDENTITY_PROVIDER]
        )
        with encrypted_control_plane(config) as shared_plane:
            with admin_client(shared_plane) as api:
                core = client.CoreV1Api(api)
                namespace = _new_namespace(core)
                for name, value in plaintexts.items():
                    _put_secret(core, namespace, name, value)
            stored = {_stored_key_id(shared_plane, namespace, name) for name in plaintexts}
            assert stored == {f"{shared_key_id}:1"}

            node_a.stop()
            write_encryption_config(
                config, [kms_v2_provider(PROVIDER, node_b.socket_path), IDENTITY_PROVIDER]
            )
            shared_plane.restart_apiserver()
            with admin_client(shared_plane) as api:
                core = client.CoreV1Api(api)
                for name, value in plaintexts.items():
                    assert _secret_value(core, namespace, name) == value

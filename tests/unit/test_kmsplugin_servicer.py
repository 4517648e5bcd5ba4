"""The KMS v2 plugin over a real gRPC server on a unix socket, called as kube-apiserver calls it.

Status (version, healthz, key_id, its cache, every problem named), Encrypt (the KMS1 blob, the
key_id of the version that sealed it), Decrypt (older versions, refusals of key_ids it never
issued or that do not match the blob), keys changed by another process, two nodes sharing an
EXTERNAL key, the socket's life, and no plaintext or material in logs or errors.
"""

from __future__ import annotations

import base64
import logging
import socket
import struct
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from tests.support.clocks import ManualClock
from tests.support.kmsplugin import refusal, serving

from kms_operator.crypto import blob as blobs
from kms_operator.errors import IncorrectKeyMaterial, InvalidCiphertext
from kms_operator.keys.service import KeyService
from kms_operator.kmsplugin import protocol
from kms_operator.kmsplugin.health import HEALTH_TTL_SECONDS
from kms_operator.kmsplugin.nodekeys import NodeKeys, key_id_text
from kms_operator.kmsplugin.server import PluginServer, SocketError
from kms_operator.kmsplugin.servicer import REFRESH_INTERVAL_SECONDS, KmsPluginServicer
from kms_operator.store.records import Origin
from kms_operator.store.rootkey import load_root_key_file
from kms_operator.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.unit

KEY = "kube-apiserver"
DEK_SEED = bytes(range(32))  # what kube-apiserver encrypts: a 32-byte seed
MATERIAL = bytes(range(200, 232))
OTHER_MATERIAL = bytes(range(10, 42))


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "kms.sock"


@pytest.fixture
def keys(service: KeyService) -> NodeKeys:
    return NodeKeys(service)


@pytest.fixture
def plugin(service: KeyService, socket_path: Path) -> Iterator[protocol.KmsPluginClient]:
    with serving(service, socket_path) as client:
        yield client


# -- Status ------------------------------------------------------------------------------


def test_status_reports_v2_ok_and_the_key_id_of_the_current_version(
    keys: NodeKeys, plugin: protocol.KmsPluginClient
) -> None:
    record = keys.create(KEY)

    status = plugin.status()

    assert (status.version, status.healthz) == ("v2", "ok")
    assert status.key_id == f"{record.key_id}:1"
    assert plugin.status() == status


def test_the_service_is_v2_key_management_service() -> None:
    service = protocol.api_pb2.DESCRIPTOR.services_by_name["KeyManagementService"]

    assert service.full_name == protocol.SERVICE_NAME == "v2.KeyManagementService"
    assert [m.name for m in service.methods] == ["Status", "Decrypt", "Encrypt"]


def test_status_names_a_missing_key_and_encrypt_is_refused(
    plugin: protocol.KmsPluginClient,
) -> None:
    status = plugin.status()

    assert status.version == "v2"
    assert status.healthz.startswith("no key 'kube-apiserver' in the plugin's store")
    assert "keys create" in status.healthz
    assert status.key_id == ""
    code, details = refusal(lambda: plugin.encrypt(DEK_SEED))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "kube-apiserver" in details


def test_status_names_a_disabled_key_and_both_calls_are_refused(
    keys: NodeKeys, plugin: protocol.KmsPluginClient
) -> None:
    record = keys.create(KEY)
    sealed = plugin.encrypt(DEK_SEED)
    keys.set_enabled(KEY, False)

    status = plugin.status()

    assert status.healthz == (
        f"key {KEY} ({record.key_id}:1) is Disabled: enable it with "
        f"'kms-operator kms-plugin keys enable --key {KEY}'"
    )
    assert status.key_id == f"{record.key_id}:1"
    for call in (
        lambda: plugin.encrypt(DEK_SEED),
        lambda: plugin.decrypt(sealed.ciphertext, sealed.key_id),
    ):
        code, details = refusal(call)
        assert code is grpc.StatusCode.FAILED_PRECONDITION
        assert "is Disabled" in details

    keys.set_enabled(KEY, True)
    assert plugin.status().healthz == "ok"
    assert plugin.decrypt(sealed.ciphertext, sealed.key_id).plaintext == DEK_SEED


def test_status_names_a_key_pending_import(
    keys: NodeKeys, plugin: protocol.KmsPluginClient
) -> None:
    record = keys.create(KEY, Origin.EXTERNAL)

    status = plugin.status()

    assert status.healthz == (
        f"key {KEY} ({record.key_id}:1) is PendingImport: import its material with "
        f"'kms-operator kms-plugin keys import --key {KEY} --material-file FILE'"
    )
    keys.import_material(KEY, MATERIAL)
    assert plugin.status().healthz == "ok"


def test_status_names_a_key_pending_deletion(
    service: KeyService, keys: NodeKeys, plugin: protocol.KmsPluginClient
) -> None:
    record = keys.create(KEY)
    service.schedule_deletion(record.key_id, 7)

    status = plugin.status()

    assert status.healthz.startswith(f"key {KEY} ({record.key_id}:1) is PendingDeletion")
    assert refusal(lambda: plugin.encrypt(DEK_SEED))[0] is grpc.StatusCode.FAILED_PRECONDITION


def test_the_health_probe_is_cached_while_the_key_stays_the_same(
    service: KeyService,
    keys: NodeKeys,
    clock: ManualClock,
    plugin: protocol.KmsPluginClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys.create(KEY)
    probes: list[int] = []
    encrypt = service.encrypt

    def counting_encrypt(*args: object, **kwargs: object) -> object:
        probes.append(1)
        return encrypt(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(service, "encrypt", counting_encrypt)

    plugin.status()
    plugin.status()
    clock.advance(timedelta(seconds=HEALTH_TTL_SECONDS - 1))
    plugin.status()
    assert len(probes) == 1

    clock.advance(timedelta(seconds=1))
    plugin.status()
    assert len(probes) == 2

    keys.rotate(KEY)  # a changed key is probed at once
    assert plugin.status().key_id.endswith(":2")
    assert len(probes) == 3


# -- Encrypt and Decrypt -----------------------------------------------------------------


def test_encrypt_seals_a_kms1_blob_under_the_current_version_without_annotations(
    keys: NodeKeys, plugin: protocol.KmsPluginClient
) -> None:
    record = keys.create(KEY)

    sealed = plugin.encrypt(DEK_SEED, uid="3f1e0c4a-request")

    header = blobs.parse_header(sealed.ciphertext)
    assert (header.key_id, header.version) == (record.key_id, 1)
    assert len(sealed.ciphertext) == blobs.HEADER_SIZE + len(DEK_SEED) + blobs.TAG_SIZE == 84
    assert sealed.key_id == plugin.status().key_id == f"{record.key_id}:1"
    assert len(sealed.key_id.encode()) < 1024
    assert dict(sealed.annotations) == {}
    assert plugin.decrypt(sealed.ciphertext, sealed.key_id).plaintext == DEK_SEED


def test_encrypt_refuses_a_plaintext_over_the_limit(
    keys: NodeKeys, plugin: protocol.KmsPluginClient
) -> None:
    keys.create(KEY)

    code, details = refusal(lambda: plugin.encrypt(b"\0" * (blobs.MAX_PLAINTEXT + 1)))

    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 4096" in details


def test_the_key_id_changes_on_rotation_only_forward_and_old_versions_keep_decrypting(
    keys: NodeKeys, plugin: protocol.KmsPluginClient
) -> None:
    record = keys.create(KEY)
    sealed = [plugin.encrypt(b"written under version 1")]
    reported = [plugin.status().key_id, plugin.status().key_id]

    for _ in range(3):
        keys.rotate(KEY)
        reported.append(plugin.status().key_id)
        sealed.append(plugin.encrypt(f"written under {reported[-1]}".encode()))

    assert reported == [
        f"{record.key_id}:1",
        f"{record.key_id}:1",
        f"{record.key_id}:2",
        f"{record.key_id}:3",
        f"{record.key_id}:4",
    ]
    assert [s.key_id for s in sealed] == reported[1:]
    assert plugin.decrypt(sealed[0].ciphertext, sealed[0].key_id).plaintext == (
        b"written under version 1"
    )
    for blob in sealed[1:]:
        assert plugin.decrypt(blob.ciphertext, blob.key_id).plaintext == (
            f"written under {blob.key_id}".encode()
        )


def test_a_rotation_by_another_process_is_seen_at_status_and_within_a_second(
    keys: NodeKeys,
    clock: ManualClock,
    reopen: Callable[[], KeyService],
    plugin: protocol.KmsPluginClient,
) -> None:
    record = keys.create(KEY)
    other_process = NodeKeys(reopen())  # its own connection to the same store file

    other_process.rotate(KEY)
    assert plugin.encrypt(DEK_SEED).key_id == f"{record.key_id}:1"  # not looked yet
    clock.advance(timedelta(seconds=REFRESH_INTERVAL_SECONDS))
    assert plugin.encrypt(DEK_SEED).key_id == f"{record.key_id}:2"

    other_process.rotate(KEY)
    assert plugin.status().key_id == f"{record.key_id}:3"  # Status looks every time


@pytest.mark.parametrize(
    "key_id",
    [
        "",
        "nope",
        "{id}",
        "{id}:",
        "{id}:0",
        "{id}:01",
        "{id}:+1",
        "{ID}:1",
        "{id}:1:1",
        "{id}:\u0661",
    ],
)
def test_decrypt_refuses_a_key_id_this_plugin_does_not_issue(
    keys: NodeKeys, plugin: protocol.KmsPluginClient, key_id: str
) -> None:
    record = keys.create(KEY)
    sealed = plugin.encrypt(DEK_SEED)
    text = key_id.format(id=record.key_id, ID=str(record.key_id).upper())

    code, details = refusal(lambda: plugin.decrypt(sealed.ciphertext, text))

    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details == "the key_id is not one this plugin issues (<key id>:<version>)"


def test_decrypt_refuses_a_key_id_that_does_not_match_the_blobs_header(
    keys: NodeKeys, plugin: protocol.KmsPluginClient
) -> None:
    record = keys.create(KEY)
    old = plugin.encrypt(DEK_SEED)
    keys.rotate(KEY)
    other = keys.create("other-key")

    for wrong in (f"{record.key_id}:2", f"{other.key_id}:1"):
        code, details = refusal(lambda wrong=wrong: plugin.decrypt(old.ciphertext, wrong))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert details == (
            f"key_id {wrong} does not name the key and version in the ciphertext's header"
        )


def test_decrypt_refuses_a_key_or_version_the_store_never_had(
    keys: NodeKeys, plugin: protocol.KmsPluginClient
) -> None:
    keys.create(KEY)
    sealed = plugin.encrypt(DEK_SEED).ciphertext
    stranger = uuid.uuid4()
    forged = {
        key_id_text(stranger, 1): sealed[:4] + stranger.bytes + sealed[20:],
        key_id_text(blobs.parse_header(sealed).key_id, 7): (
            sealed[:20] + struct.pack(">I", 7) + sealed[24:]
        ),
    }

    for key_id, ciphertext in forged.items():
        code, details = refusal(lambda c=ciphertext, k=key_id: plugin.decrypt(c, k))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert details == f"key_id {key_id} names no key version of this plugin's store"


def test_decrypt_refuses_a_tampered_or_truncated_blob_with_one_message(
    keys: NodeKeys, plugin: protocol.KmsPluginClient
) -> None:
    keys.create(KEY)
    sealed = plugin.encrypt(DEK_SEED)
    flipped = sealed.ciphertext[:-1] + bytes([sealed.ciphertext[-1] ^ 1])

    for ciphertext in (flipped, sealed.ciphertext[:-5], sealed.ciphertext[:10]):
        code, details = refusal(lambda c=ciphertext: plugin.decrypt(c, sealed.key_id))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert details == InvalidCiphertext.MESSAGE


def test_decrypt_opens_blobs_of_an_earlier_plugin_key(
    service: KeyService, keys: NodeKeys, socket_path: Path
) -> None:
    """Switching ``--key`` to a new key keeps every Secret written under the old one readable."""
    keys.create("old-key")
    keys.create(KEY)
    with serving(service, socket_path, key_name="old-key") as plugin:
        sealed = plugin.encrypt(DEK_SEED)
    with serving(service, socket_path, key_name=KEY) as plugin:
        assert plugin.decrypt(sealed.ciphertext, sealed.key_id).plaintext == DEK_SEED
        assert plugin.encrypt(DEK_SEED).key_id != sealed.key_id


def test_a_key_outside_the_plugins_namespace_is_never_used(
    service: KeyService, plugin: protocol.KmsPluginClient
) -> None:
    operator_key = service.create_key("payments", KEY)
    blob = service.encrypt("payments", KEY, DEK_SEED).ciphertext_blob

    assert plugin.status().key_id == ""
    code, _ = refusal(lambda: plugin.decrypt(blob, key_id_text(operator_key.key_id, 1)))
    assert code is grpc.StatusCode.INVALID_ARGUMENT


# -- nodes sharing one EXTERNAL key ------------------------------------------------------


def _node(tmp_path: Path, name: str) -> KeyService:
    root = tmp_path / name
    return KeyService(SqliteKeyStore(root / "store.db", load_root_key_file(root / "root.key")))


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[KeyService]]:
    made = [_node(tmp_path, name) for name in ("node-a", "node-b", "node-c")]
    yield made
    for service in made:
        service._store.close()


def test_nodes_sharing_an_external_key_decrypt_each_others_blobs(
    nodes: list[KeyService], tmp_path: Path
) -> None:
    a, b, c = (NodeKeys(service) for service in nodes)
    shared = a.create(KEY, Origin.EXTERNAL).key_id
    b.create(KEY, Origin.EXTERNAL, key_id=shared)
    c.create(KEY, Origin.EXTERNAL, key_id=shared)
    a.import_material(KEY, MATERIAL)
    b.import_material(KEY, MATERIAL)
    c.import_material(KEY, OTHER_MATERIAL)  # a mistake: another file

    with (
        serving(nodes[0], tmp_path / "a.sock") as on_a,
        serving(nodes[1], tmp_path / "b.sock") as on_b,
        serving(nodes[2], tmp_path / "c.sock") as on_c,
    ):
        assert on_a.status().key_id == on_b.status().key_id == f"{shared}:1"
        from_a, from_b = on_a.encrypt(b"written on a"), on_b.encrypt(b"written on b")
        assert on_b.decrypt(from_a.ciphertext, from_a.key_id).plaintext == b"written on a"
        assert on_a.decrypt(from_b.ciphertext, from_b.key_id).plaintext == b"written on b"

        # Node c's material differs: neither side opens the other's blobs.
        from_c = on_c.encrypt(b"written on c")
        for call in (
            lambda: on_c.decrypt(from_a.ciphertext, from_a.key_id),
            lambda: on_a.decrypt(from_c.ciphertext, from_c.key_id),
        ):
            assert refusal(call) == (grpc.StatusCode.INVALID_ARGUMENT, InvalidCiphertext.MESSAGE)

        # Rotation of a shared key: the same new material on each node, a new version on each.
        a.import_material(KEY, OTHER_MATERIAL)
        b.import_material(KEY, OTHER_MATERIAL)
        assert on_a.status().key_id == on_b.status().key_id == f"{shared}:2"
        rotated = on_a.encrypt(b"version two")
        assert on_b.decrypt(rotated.ciphertext, rotated.key_id).plaintext == b"version two"
        assert on_b.decrypt(from_a.ciphertext, from_a.key_id).plaintext == b"written on a"


def test_a_version_that_lost_its_material_takes_only_the_same_material_again(
    nodes: list[KeyService], tmp_path: Path
) -> None:
    a, b = NodeKeys(nodes[0]), NodeKeys(nodes[1])
    shared = a.create(KEY, Origin.EXTERNAL).key_id
    b.create(KEY, Origin.EXTERNAL, key_id=shared)
    a.import_material(KEY, MATERIAL)
    b.import_material(KEY, MATERIAL)
    nodes[1].delete_imported_material(shared)

    with pytest.raises(IncorrectKeyMaterial, match="only that same material"):
        b.import_material(KEY, OTHER_MATERIAL)

    assert b.import_material(KEY, MATERIAL)[1] == 1
    with (
        serving(nodes[0], tmp_path / "a.sock") as on_a,
        serving(nodes[1], tmp_path / "b.sock") as on_b,
    ):
        sealed = on_a.encrypt(DEK_SEED)
        assert on_b.decrypt(sealed.ciphertext, sealed.key_id).plaintext == DEK_SEED


# -- the socket --------------------------------------------------------------------------


def test_the_socket_is_owner_only_in_an_owner_only_directory_and_removed_on_stop(
    service: KeyService, keys: NodeKeys, socket_path: Path
) -> None:
    keys.create(KEY)
    with serving(service, socket_path) as plugin:
        assert socket_path.stat().st_mode & 0o777 == 0o600
        assert socket_path.parent.stat().st_mode & 0o777 == 0o700
        assert plugin.status().healthz == "ok"
    assert not socket_path.exists()


def test_a_stale_socket_is_removed_at_start(
    service: KeyService, keys: NodeKeys, socket_path: Path
) -> None:
    keys.create(KEY)
    socket_path.parent.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path))
    stale.close()  # a plugin killed before it could remove its socket

    with serving(service, socket_path) as plugin:
        assert plugin.status().healthz == "ok"


def test_a_socket_a_live_process_serves_or_another_file_is_not_taken_over(
    service: KeyService, socket_path: Path, tmp_path: Path
) -> None:
    with serving(service, socket_path), pytest.raises(SocketError, match="another process serves"):
        PluginServer(KmsPluginServicer(service, KEY), socket_path).start()

    regular = tmp_path / "not-a-socket"
    regular.write_text("keep me")
    with pytest.raises(SocketError, match="is not a socket"):
        PluginServer(KmsPluginServicer(service, KEY), regular).start()
    assert regular.read_text() == "keep me"


# -- no plaintext or material anywhere a person reads ------------------------------------


def _forms(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode(),
        secret.decode("latin-1"),
    ]


def test_no_plaintext_or_material_in_logs_or_errors(
    service: KeyService,
    keys: NodeKeys,
    socket_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    canary = b"canary-plaintext-0123456789abcdef"
    caplog.set_level(logging.DEBUG)
    details: list[str] = []
    with serving(service, socket_path) as plugin:
        keys.create("byok", Origin.EXTERNAL)
        keys.import_material("byok", MATERIAL)
        keys.create(KEY)
        plugin.status()
        sealed = plugin.encrypt(canary, uid="uid-1")
        plugin.decrypt(sealed.ciphertext, sealed.key_id, uid="uid-2")
        keys.rotate(KEY)
        plugin.status()
        tampered = sealed.ciphertext[:-1] + bytes([sealed.ciphertext[-1] ^ 1])
        details.append(refusal(lambda: plugin.decrypt(tampered, sealed.key_id))[1])
        details.append(refusal(lambda: plugin.decrypt(sealed.ciphertext, "forged"))[1])
        keys.set_enabled(KEY, False)
        details.append(plugin.status().healthz)
        details.append(refusal(lambda: plugin.decrypt(sealed.ciphertext, sealed.key_id))[1])
        details.append(refusal(lambda: plugin.encrypt(canary))[1])

    text = "\n".join([*(r.getMessage() for r in caplog.records), *details])
    assert "refused" in text and "Disabled" in text  # the scan below read the right things
    for secret in (canary, MATERIAL):
        for form in _forms(secret):
            assert form not in text

"""``kms-operator kms-plugin serve`` as a real process, called over its unix socket.

The node's key is made and changed by ``kms-operator kms-plugin keys`` processes while the
plugin serves; the plugin reports each change at its next Status, keeps decrypting older
versions, stops cleanly on SIGTERM (socket removed, exit 0), starts again after a SIGKILL left
its socket behind, and logs JSON lines with no plaintext. (kube-apiserver itself calling the
plugin is tested elsewhere.)
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.kmsplugin import PluginProcess

from kms_operator.kmsplugin import protocol

CANARY = b"integration-canary-plaintext-0042"


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[PluginProcess]:
    process = PluginProcess(tmp_path)
    created = process.keys("create")
    assert created.returncode == 0, created.stderr
    yield process
    process.kill()


def _reported(plugin: PluginProcess) -> str:
    listed = plugin.keys("list", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    [view] = json.loads(listed.stdout)
    return str(view["pluginKeyId"])


def test_the_plugin_process_serves_follows_its_keys_and_stops_cleanly(
    plugin: PluginProcess,
) -> None:
    plugin.start()
    assert plugin.socket_path.stat().st_mode & 0o777 == 0o600
    first = _reported(plugin)

    with protocol.connect(plugin.socket_path) as client:
        status = client.status()
        assert (status.version, status.healthz, status.key_id) == ("v2", "ok", first)
        sealed = client.encrypt(CANARY, uid="integration-1")
        assert sealed.key_id == first
        assert client.decrypt(sealed.ciphertext, sealed.key_id).plaintext == CANARY

        rotated = plugin.keys("rotate")
        assert rotated.returncode == 0, rotated.stderr
        second = _reported(plugin)
        assert second != first
        assert client.status().key_id == second
        assert client.encrypt(CANARY).key_id == second
        assert client.decrypt(sealed.ciphertext, sealed.key_id).plaintext == CANARY

        assert plugin.keys("disable").returncode == 0
        assert "is Disabled" in client.status().healthz
        assert plugin.keys("enable").returncode == 0
        assert client.status().healthz == "ok"

    assert plugin.stop() == 0
    assert not plugin.socket_path.exists()

    log = plugin.log
    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    messages = [r["message"] for r in records]
    assert any(m.startswith("KMS v2 plugin listening on unix://") for m in messages)
    assert f"key_id is now {second!r} (was {first!r})" in messages
    assert "stopping on a signal" in messages
    for form in (CANARY.decode(), CANARY.hex(), base64.b64encode(CANARY).decode()):
        assert form not in log


def test_the_plugin_starts_again_after_a_kill_left_its_socket(plugin: PluginProcess) -> None:
    plugin.start()
    with protocol.connect(plugin.socket_path) as client:
        sealed = client.encrypt(CANARY)
    plugin.kill()
    assert plugin.socket_path.exists()  # nobody removed it

    plugin.start()
    with protocol.connect(plugin.socket_path) as client:
        assert client.status().healthz == "ok"
        assert client.decrypt(sealed.ciphertext, sealed.key_id).plaintext == CANARY
    assert plugin.stop() == 0
    assert "removed the stale socket" in plugin.log


def test_serve_refuses_to_start_without_a_store_and_makes_none(tmp_path: Path) -> None:
    process = PluginProcess(tmp_path)

    result = process.serve_until_exit()

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: no plugin store at {process.store_path}: create the key first "
        "(kms-operator kms-plugin keys create)"
    ]
    assert not process.store_path.exists()
    assert not process.root_key_file.exists()

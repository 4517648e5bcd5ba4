"""``kms-operator kms-plugin keys …``: the node's keys, through click's CliRunner.

create (KMS, EXTERNAL, a given key id), rotate, list, disable, enable, import (the local import
flow), their one-line refusals, the files they make, and a serving plugin that sees what a
``keys`` command changed from another KeyService on the same store file.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from tests.support.kmsplugin import serving

from kms_operator.cli.operator_cli import main
from kms_operator.keys.service import KeyService
from kms_operator.kmsplugin.nodekeys import PLUGIN_NAMESPACE
from kms_operator.store.rootkey import load_root_key_file
from kms_operator.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.unit

MATERIAL = bytes(range(32))
OTHER_MATERIAL = bytes(range(50, 82))


class Node:
    """One control-plane node's plugin files, and its ``keys`` commands."""

    def __init__(self, root: Path) -> None:
        self.store_path = root / "lib" / "store.db"
        self.root_key_file = root / "etc" / "root.key"
        self.runner = CliRunner()
        self._opened: list[SqliteKeyStore] = []

    def keys(self, *args: str) -> Result:
        return self.runner.invoke(
            main,
            [
                "kms-plugin",
                "keys",
                args[0],
                "--store-path",
                str(self.store_path),
                "--root-key-file",
                str(self.root_key_file),
                *args[1:],
            ],
        )

    def ok(self, *args: str) -> str:
        result = self.keys(*args)
        assert result.exit_code == 0, result.output
        return result.output

    def refused(self, *args: str) -> str:
        """The one line a refused command prints (its exit code is non-zero)."""
        result = self.keys(*args)
        assert result.exit_code != 0, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        return lines[0]

    def listed(self) -> list[dict[str, object]]:
        views: list[dict[str, object]] = json.loads(self.ok("list", "--output", "json"))
        return views

    def service(self) -> KeyService:
        """A KeyService of its own on the node's store (as ``serve`` has)."""
        store = SqliteKeyStore(self.store_path, load_root_key_file(self.root_key_file))
        self._opened.append(store)
        return KeyService(store)

    def close(self) -> None:
        for store in self._opened:
            store.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    made = Node(tmp_path / "node-a")
    yield made
    made.close()


@pytest.fixture
def node_b(tmp_path: Path) -> Iterator[Node]:
    made = Node(tmp_path / "node-b")
    yield made
    made.close()


def _material_file(tmp_path: Path, material: bytes, name: str = "material.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(material)
    path.chmod(0o600)
    return path


def test_create_makes_owner_only_files_and_a_kms_key_and_is_idempotent(node: Node) -> None:
    output = node.ok("create")

    [view] = node.listed()
    key_id = view["keyId"]
    assert view == {
        "name": "kube-apiserver",
        "keyId": key_id,
        "origin": "KMS",
        "state": "Enabled",
        "currentVersion": 1,
        "pluginKeyId": f"{key_id}:1",
    }
    assert (
        output == f"key kube-apiserver: key id {key_id}, origin KMS, Enabled; key_id {key_id}:1\n"
    )
    assert node.ok("create") == output
    assert node.root_key_file.stat().st_mode & 0o777 == 0o600
    for path in node.store_path.parent.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
    assert node.store_path.parent.stat().st_mode & 0o777 == 0o700


def test_list_shows_a_table_without_material(node: Node) -> None:
    node.ok("create")
    node.ok("create", "--key", "spare", "--origin", "EXTERNAL")

    lines = node.ok("list").splitlines()

    assert lines[0].split() == [
        "NAME",
        "KEY",
        "ID",
        "ORIGIN",
        "STATE",
        "VERSION",
        "KEY_ID",
        "REPORTED",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["kube-apiserver"][2:5] == ["KMS", "Enabled", "1"]
    assert rows["spare"][2:5] == ["EXTERNAL", "PendingImport", "1"]
    assert rows["spare"][5] == f"{rows['spare'][1]}:1"


def test_rotate_makes_a_new_version_and_a_new_key_id(node: Node) -> None:
    node.ok("create")
    key_id = node.listed()[0]["keyId"]

    output = node.ok("rotate")

    assert output.startswith(f"key kube-apiserver rotated to version 2: key_id {key_id}:2;")
    assert "kubectl get secrets -A -o json | kubectl replace -f -" in output
    assert node.listed()[0]["pluginKeyId"] == f"{key_id}:2"


def test_disable_and_enable(node: Node) -> None:
    node.ok("create")
    key_id = node.listed()[0]["keyId"]

    assert node.ok("disable") == f"key kube-apiserver ({key_id}) is Disabled\n"
    assert node.listed()[0]["state"] == "Disabled"
    assert node.ok("enable") == f"key kube-apiserver ({key_id}) is Enabled\n"


def test_refusals_are_one_line_and_non_zero(node: Node, tmp_path: Path) -> None:
    assert node.refused("list") == (
        f"Error: no plugin store at {node.store_path}: create the key first "
        "(kms-operator kms-plugin keys create)"
    )
    assert not node.store_path.exists()
    assert not node.root_key_file.exists()

    assert "only EXTERNAL keys take a given key id" in node.refused(
        "create", "--key-id", str(uuid.uuid4())
    )
    node.ok("create")
    assert node.refused("create", "--origin", "EXTERNAL") == (
        "Error: key kube-apiserver exists already with origin KMS, not EXTERNAL"
    )
    assert "no key 'missing' in this plugin store" in node.refused("rotate", "--key", "missing")
    assert "only EXTERNAL keys take imported material" in node.refused(
        "import", "--material-file", str(_material_file(tmp_path, MATERIAL))
    )
    node.ok("create", "--key", "byok", "--origin", "EXTERNAL")
    assert "EXTERNAL origin: it rotates by importing new material" in node.refused(
        "rotate", "--key", "byok"
    )
    assert "must be 32 raw bytes, got 31" in node.refused(
        "import", "--key", "byok", "--material-file", str(_material_file(tmp_path, MATERIAL[:31]))
    )


def test_create_never_makes_a_new_root_key_for_an_existing_store(node: Node) -> None:
    node.ok("create")
    node.root_key_file.unlink()

    assert node.refused("create", "--key", "second") == (
        f"Error: root key file {node.root_key_file} does not exist"
    )
    assert not node.root_key_file.exists()


def test_a_bad_key_name_is_a_usage_error(node: Node) -> None:
    result = node.keys("create", "--key", "Not_A_Name")

    assert result.exit_code == 2
    assert "must be 1-63 lower-case letters" in result.output


def test_import_and_a_second_node_sharing_the_key(node: Node, node_b: Node, tmp_path: Path) -> None:
    material_file = _material_file(tmp_path, MATERIAL)
    node.ok("create", "--origin", "EXTERNAL")
    shared = str(node.listed()[0]["keyId"])

    assert node.ok("import", "--material-file", str(material_file)) == (
        f"material imported as version 1 of key kube-apiserver ({shared}); key_id {shared}:1\n"
    )
    assert node.ok("import", "--material-file", str(material_file)) == (
        f"material is already version 1 of key kube-apiserver ({shared}); key_id {shared}:1\n"
    )
    node_b.ok("create", "--origin", "EXTERNAL", "--key-id", shared)
    node_b.ok("import", "--material-file", str(material_file))
    assert node_b.listed()[0]["pluginKeyId"] == f"{shared}:1"

    a, b = node.service(), node_b.service()
    blob = a.encrypt(PLUGIN_NAMESPACE, "kube-apiserver", b"from node a").ciphertext_blob
    assert b.decrypt(blob).plaintext == b"from node a"

    # New material is the shared key's rotation: a new version on each node.
    rotated = _material_file(tmp_path, OTHER_MATERIAL, "material-2.bin")
    node.ok("import", "--material-file", str(rotated))
    node_b.ok("import", "--material-file", str(rotated))
    assert node.listed()[0]["pluginKeyId"] == node_b.listed()[0]["pluginKeyId"] == f"{shared}:2"


def test_different_material_for_a_version_that_lost_its_own_is_refused(
    node: Node, tmp_path: Path
) -> None:
    node.ok("create", "--origin", "EXTERNAL")
    node.ok("import", "--material-file", str(_material_file(tmp_path, MATERIAL)))
    service = node.service()
    service.delete_imported_material(service.find(PLUGIN_NAMESPACE, "kube-apiserver").key_id)

    line = node.refused(
        "import", "--material-file", str(_material_file(tmp_path, OTHER_MATERIAL, "other.bin"))
    )

    assert "only that same material can be imported again" in line
    node.ok("import", "--material-file", str(_material_file(tmp_path, MATERIAL)))


def test_import_warns_about_a_material_file_others_may_read(node: Node, tmp_path: Path) -> None:
    node.ok("create", "--origin", "EXTERNAL")
    material_file = _material_file(tmp_path, MATERIAL)
    material_file.chmod(0o644)

    result = node.keys("import", "--material-file", str(material_file))

    assert result.exit_code == 0, result.output
    assert "has mode 0644; keep key material owner-only" in result.stderr


def test_serving_plugin_sees_what_keys_commands_change(node: Node, tmp_path: Path) -> None:
    node.ok("create")
    key_id = node.listed()[0]["keyId"]
    with serving(node.service(), tmp_path / "kms.sock") as plugin:
        before = plugin.encrypt(b"written before the rotation")
        assert plugin.status().key_id == f"{key_id}:1"

        node.ok("rotate")
        assert plugin.status().key_id == f"{key_id}:2"
        assert plugin.encrypt(b"after").key_id == f"{key_id}:2"
        assert plugin.decrypt(before.ciphertext, before.key_id).plaintext == (
            b"written before the rotation"
        )

        node.ok("disable")
        assert "is Disabled" in plugin.status().healthz
        node.ok("enable")
        assert plugin.status().healthz == "ok"

"""``kms-operator store backup|restore``: the operations commands the README documents."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kms_operator.cli.operator_cli import main
from kms_operator.keys.service import KeyService
from kms_operator.store.rootkey import load_root_key_file
from kms_operator.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.unit


def _args(store: Path, root_key: Path) -> list[str]:
    return ["--store-path", str(store), "--root-key-file", str(root_key)]


def test_backup_then_restore_brings_old_ciphertexts_back(tmp_path: Path) -> None:
    store, root_key, backup = tmp_path / "kms.db", tmp_path / "root.key", tmp_path / "b.db"
    key_store = SqliteKeyStore(store, load_root_key_file(root_key))
    service = KeyService(key_store)
    service.create_key("ns", "k")
    blob = service.encrypt("ns", "k", b"kept").ciphertext_blob
    key_store.close()

    runner = CliRunner()
    saved = runner.invoke(main, ["store", "backup", *_args(store, root_key), "--to", str(backup)])
    assert saved.exit_code == 0, saved.output
    assert backup.stat().st_mode & 0o077 == 0

    for path in tmp_path.glob("kms.db*"):
        path.unlink()
    restored = runner.invoke(
        main, ["store", "restore", *_args(store, root_key), "--from", str(backup)]
    )
    assert restored.exit_code == 0, restored.output
    key_store = SqliteKeyStore(store, load_root_key_file(root_key, create=False))
    assert KeyService(key_store).decrypt(blob).plaintext == b"kept"
    key_store.close()


def test_backup_refuses_a_missing_root_key_instead_of_making_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["store", "backup", *_args(tmp_path / "kms.db", tmp_path / "none.key"),
         "--to", str(tmp_path / "b.db")],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "does not exist" in result.output
    assert not (tmp_path / "none.key").exists()


def test_restore_with_another_root_key_is_refused(tmp_path: Path) -> None:
    store, backup = tmp_path / "kms.db", tmp_path / "b.db"
    key_store = SqliteKeyStore(store, load_root_key_file(tmp_path / "a.key"))
    key_store.backup(backup)
    key_store.close()
    load_root_key_file(tmp_path / "b.key")
    result = CliRunner().invoke(
        main, ["store", "restore", *_args(store, tmp_path / "b.key"), "--from", str(backup)]
    )
    assert result.exit_code != 0
    assert "root key" in result.output

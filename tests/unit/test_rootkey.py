"""The root of trust: the root key file and the wrapping of material under it."""

from __future__ import annotations

import base64
import os
import stat
import uuid
from pathlib import Path

import pytest

from kms_operator.errors import StoreError
from kms_operator.store import rootkey
from kms_operator.store.rootkey import ROOT_KEY_SIZE, RootKey, RootKeyError, load_root_key_file

pytestmark = pytest.mark.unit

KEY = bytes(range(200, 232))
KEY_ID = uuid.UUID("0f0e0d0c-0b0a-4908-8706-050403020100")
MATERIAL = bytes(range(32))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write(path: Path, content: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(content)
    path.chmod(mode)
    return path


def _same_key(a: RootKey, b: RootKey) -> bool:
    return b.unwrap_material(KEY_ID, 1, a.wrap_material(KEY_ID, 1, MATERIAL)) == MATERIAL


# -- the file --------------------------------------------------------------------------------


def test_created_with_mode_0600_when_absent(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "root.key"
    key = load_root_key_file(path)
    assert _mode(path) == 0o600
    assert len(path.read_bytes()) == ROOT_KEY_SIZE
    assert _same_key(key, RootKey(path.read_bytes()))


def test_created_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_root_key_file(tmp_path / "root.key")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "root.key") == 0o600


def test_reused_on_second_load(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    first = load_root_key_file(path)
    content = path.read_bytes()
    second = load_root_key_file(path)
    assert path.read_bytes() == content
    assert _same_key(first, second)
    assert _same_key(second, load_root_key_file(path, create=False))


def test_two_fresh_files_hold_different_keys(tmp_path: Path) -> None:
    one, two = load_root_key_file(tmp_path / "a.key"), load_root_key_file(tmp_path / "b.key")
    assert (tmp_path / "a.key").read_bytes() != (tmp_path / "b.key").read_bytes()
    assert not _unwraps(two, one.wrap_material(KEY_ID, 1, MATERIAL))


def test_absent_and_create_false_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    with pytest.raises(RootKeyError, match="does not exist") as caught:
        load_root_key_file(path, create=False)
    assert str(path) in str(caught.value)
    assert not path.exists()
    assert isinstance(caught.value, StoreError)


def test_a_file_created_concurrently_is_used_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another replica creates the file between our exists() and our open(O_EXCL)."""
    path = _write(tmp_path / "root.key", KEY)
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda self: False if self == path else real_exists(self))
    key = load_root_key_file(path)
    assert path.read_bytes() == KEY
    assert _same_key(key, RootKey(KEY))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o602, 0o610, 0o601, 0o666])
def test_refused_when_group_or_others_have_access(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "root.key", KEY, mode)
    with pytest.raises(RootKeyError) as caught:
        load_root_key_file(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"{mode:04o}" in message
    assert "group and others" in message
    assert "chmod 600" in message
    assert KEY.hex() not in message


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_owner_only_modes_are_accepted(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "root.key", KEY, mode)
    assert _same_key(load_root_key_file(path), RootKey(KEY))


def test_mode_is_checked_through_a_symlink(tmp_path: Path) -> None:
    """Mounted Secrets are symlinks (key -> ..data/key): the target's mode counts."""
    target = _write(tmp_path / "target.key", KEY, 0o644)
    link = tmp_path / "root.key"
    link.symlink_to(target)
    with pytest.raises(RootKeyError, match="0644"):
        load_root_key_file(link)
    target.chmod(0o400)
    assert _same_key(load_root_key_file(link), RootKey(KEY))


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00" * 31,
        b"\x00" * 33,
        b"\x00" * 64,
        base64.b64encode(b"\x00" * 31),
        base64.b64encode(b"\x00" * 33),
        base64.b64encode(b"\x00" * 32)[:-2],
        b"not base64 at all, and not thirty-two bytes either",
        base64.urlsafe_b64encode(b"\xff" * 32),
    ],
    ids=["empty", "31", "33", "64", "b64-31", "b64-33", "b64-cut", "junk", "urlsafe-b64"],
)
def test_wrong_length_is_refused(tmp_path: Path, content: bytes) -> None:
    path = _write(tmp_path / "root.key", content)
    with pytest.raises(RootKeyError) as caught:
        load_root_key_file(path)
    message = str(caught.value)
    assert "32 raw bytes or their base64" in message
    assert f"holds {len(content)} bytes" in message
    assert path.read_bytes() == content  # never overwritten


@pytest.mark.parametrize("suffix", [b"", b"\n", b"\r\n", b"  \n"])
def test_base64_content_is_accepted(tmp_path: Path, suffix: bytes) -> None:
    path = _write(tmp_path / "root.key", base64.b64encode(KEY) + suffix)
    assert _same_key(load_root_key_file(path), RootKey(KEY))


def test_raw_and_base64_of_the_same_bytes_are_the_same_key(tmp_path: Path) -> None:
    raw = load_root_key_file(_write(tmp_path / "raw.key", KEY))
    encoded = load_root_key_file(_write(tmp_path / "b64.key", base64.b64encode(KEY)))
    assert _same_key(raw, encoded)
    assert _same_key(encoded, raw)


# -- the key ---------------------------------------------------------------------------------


def test_repr_hides_the_key() -> None:
    key = RootKey(KEY)
    for text in (repr(key), str(key)):
        assert KEY.hex() not in text
        assert repr(KEY) not in text
        assert "hidden" in text
    assert not hasattr(key, "__dict__")


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_root_key_of_the_wrong_size(size: int) -> None:
    with pytest.raises(RootKeyError, match=f"got {size}"):
        RootKey(bytes(size))


def _unwraps(key: RootKey, wrapped: bytes, key_id: uuid.UUID = KEY_ID, version: int = 1) -> bool:
    try:
        return key.unwrap_material(key_id, version, wrapped) == MATERIAL
    except StoreError as exc:
        assert "wrong root key or a corrupted store" in str(exc)
        return False


def test_wrap_round_trip_and_randomised() -> None:
    key = RootKey(KEY)
    first = key.wrap_material(KEY_ID, 3, MATERIAL)
    second = key.wrap_material(KEY_ID, 3, MATERIAL)
    assert first != second
    assert MATERIAL not in first
    assert len(first) == 12 + len(MATERIAL) + 16
    assert key.unwrap_material(KEY_ID, 3, first) == key.unwrap_material(KEY_ID, 3, second)


def test_wrap_is_bound_to_key_id_and_version() -> None:
    key = RootKey(KEY)
    wrapped = key.wrap_material(KEY_ID, 2, MATERIAL)
    assert _unwraps(key, wrapped, KEY_ID, 2)
    assert not _unwraps(key, wrapped, uuid.uuid4(), 2)
    assert not _unwraps(key, wrapped, KEY_ID, 1)
    assert not _unwraps(key, wrapped, KEY_ID, 3)
    assert not _unwraps(key, wrapped, KEY_ID, 2 + 2**24)


def test_wrap_is_bound_to_the_root_key() -> None:
    wrapped = RootKey(KEY).wrap_material(KEY_ID, 1, MATERIAL)
    assert not _unwraps(RootKey.generate(), wrapped)


def test_secrets_and_material_are_separate_domains() -> None:
    key = RootKey(KEY)
    secret = key.wrap_secret("import/t1", b"private key pem")
    assert key.unwrap_secret("import/t1", secret) == b"private key pem"
    with pytest.raises(StoreError):
        key.unwrap_secret("import/t2", secret)
    with pytest.raises(StoreError):
        key.unwrap_material(KEY_ID, 1, secret)
    with pytest.raises(StoreError):
        key.unwrap_secret("import/t1", key.wrap_material(KEY_ID, 1, MATERIAL))


def test_corrupted_or_truncated_wrapped_material_is_a_store_error() -> None:
    key = RootKey(KEY)
    wrapped = key.wrap_material(KEY_ID, 1, MATERIAL)
    for length in range(len(wrapped)):
        assert not _unwraps(key, wrapped[:length]), length
    for index in range(len(wrapped)):
        changed = bytearray(wrapped)
        changed[index] ^= 0x01
        assert not _unwraps(key, bytes(changed)), index


def test_store_error_messages_never_carry_material() -> None:
    key = RootKey(KEY)
    wrapped = key.wrap_material(KEY_ID, 1, MATERIAL)
    with pytest.raises(StoreError) as caught:
        RootKey.generate().unwrap_material(KEY_ID, 1, wrapped)
    assert wrapped.hex() not in str(caught.value)
    assert MATERIAL.hex() not in str(caught.value)


def test_module_has_one_aad_per_purpose() -> None:
    assert rootkey._MATERIAL_AAD != rootkey._SECRET_AAD

"""Shared fixtures of the unit tests of the key lifecycle.

- ``clock``: a :class:`~tests.support.clocks.ManualClock` (never sleep: move it).
- ``root_key`` / ``store``: a :class:`SqliteKeyStore` on ``tmp_path`` with a root key file.
- ``service``: a :class:`KeyService` over ``store`` with ``clock`` and real-length days.
- ``reopen``: a fresh ``KeyService`` over the same store file, as after a restart.
- ``importer``: the user's side of a ``KeyMaterialImport`` (parameters, wrapping, import),
  with RSA wrapping keys drawn from a per-session pool, because RSA key generation is slow.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kms_operator.crypto import wrapping
from kms_operator.crypto.wrapping import WrappingKeySpec
from kms_operator.keys.clock import Timescale
from kms_operator.keys.service import KeyService
from kms_operator.store.rootkey import RootKey, load_root_key_file
from kms_operator.store.sqlite import SqliteKeyStore

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tests.support.clocks import ManualClock  # noqa: E402
from tests.support.importing import Importer  # noqa: E402

REAL_DAY = Timescale(86400)
#: Wrapping key pairs generated per spec and reused across the session.
_POOL_SIZE = 3


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def root_key(tmp_path: Path) -> RootKey:
    return load_root_key_file(tmp_path / "secrets" / "root.key")


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "kms.db"


@pytest.fixture
def store(store_path: Path, root_key: RootKey) -> Iterator[SqliteKeyStore]:
    opened = SqliteKeyStore(store_path, root_key)
    yield opened
    opened.close()


@pytest.fixture
def service(store: SqliteKeyStore, clock: ManualClock) -> KeyService:
    return KeyService(store, clock=clock, timescale=REAL_DAY)


@pytest.fixture
def reopen(
    store_path: Path, root_key: RootKey, clock: ManualClock
) -> Iterator[Callable[[], KeyService]]:
    """Open the same store file again and build a new service over it (a restart)."""
    opened: list[SqliteKeyStore] = []

    def _reopen() -> KeyService:
        again = SqliteKeyStore(store_path, root_key)
        opened.append(again)
        return KeyService(again, clock=clock, timescale=REAL_DAY)

    yield _reopen
    for again in opened:
        again.close()


@pytest.fixture(scope="session")
def wrapping_key_pool() -> Callable[[WrappingKeySpec], tuple[bytes, bytes]]:
    """Round-robin over a few key pairs per spec, generated on first need."""
    pools: dict[WrappingKeySpec, Iterator[tuple[bytes, bytes]]] = {}
    real = wrapping.generate_wrapping_key

    def _next(spec: WrappingKeySpec) -> tuple[bytes, bytes]:
        if spec not in pools:
            pools[spec] = itertools.cycle([real(spec) for _ in range(_POOL_SIZE)])
        return next(pools[spec])

    return _next


@pytest.fixture
def fast_wrapping_keys(
    monkeypatch: pytest.MonkeyPatch,
    wrapping_key_pool: Callable[[WrappingKeySpec], tuple[bytes, bytes]],
) -> None:
    monkeypatch.setattr(wrapping, "generate_wrapping_key", wrapping_key_pool)


@pytest.fixture
def importer(service: KeyService, fast_wrapping_keys: None) -> Importer:
    return Importer(service)

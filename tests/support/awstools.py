"""The AWS client-side tools of the tests and the benchmark, and the reference KMS servers.

- SOPS and local-kms are Go binaries built by ``hack/tools/ensure.sh`` into the directory
  ``KMS_TOOLS_BIN`` names (the Makefile exports it), else into the one the script prints last.
- moto's server is the ``moto_server`` script of the virtualenv running this Python (the dev
  extra of pyproject.toml installs ``moto[server]``).

:func:`local_kms_server` and :func:`moto_server` run one reference server on a loopback port
for a ``with`` block, through the process harness of :mod:`kms_operator.devcluster.processes`
(own session, SIGTERM to the process group, then SIGKILL). Both speak AWS KMS's JSON 1.1
protocol over plain HTTP and accept any credentials.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from kms_operator.devcluster.processes import ProcessGroup, http_get, wait_until

__all__ = [
    "REGION",
    "TOOLS_BIN_VARIABLE",
    "AwsToolsError",
    "local_kms_binary",
    "local_kms_server",
    "moto_server",
    "sops_binary",
    "tools_bin",
]

REPO = Path(__file__).resolve().parents[2]
ENSURE_TOOLS_SCRIPT = REPO / "hack" / "tools" / "ensure.sh"
TOOLS_BIN_VARIABLE = "KMS_TOOLS_BIN"
#: The region the reference servers put in their ARNs (local-kms's own default is eu-west-2).
REGION = "us-east-1"
#: local-kms's account id (its default, made explicit: the ARNs of its keys carry it).
LOCAL_KMS_ACCOUNT_ID = "111122223333"
#: A cold start of moto's server imports much of moto: generous on a loaded 2-core machine.
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0


class AwsToolsError(RuntimeError):
    """A tool cannot be found or built, or a reference server does not start."""


@functools.cache
def tools_bin() -> Path:
    """The directory of sops and local-kms: ``KMS_TOOLS_BIN``, else built by ensure.sh."""
    value = os.environ.get(TOOLS_BIN_VARIABLE)
    if value:
        return Path(value).expanduser().resolve()
    done = subprocess.run(
        [str(ENSURE_TOOLS_SCRIPT)], capture_output=True, text=True, check=False, cwd=REPO
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = "\n".join(done.stderr.splitlines()[-40:])
        raise AwsToolsError(f"{ENSURE_TOOLS_SCRIPT} exited with code {done.returncode}:\n{last}")
    return Path(lines[-1])


def _tool(name: str) -> Path:
    path = tools_bin() / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise AwsToolsError(
            f"{tools_bin()} holds no executable {name}; run {ENSURE_TOOLS_SCRIPT} "
            f"(or point {TOOLS_BIN_VARIABLE} at the directory it prints)"
        )
    return path


def sops_binary() -> Path:
    """SOPS (it finds the KMS through ``AWS_ENDPOINT_URL_KMS``, trusts ``AWS_CA_BUNDLE``; its
    ``--version`` asks GitHub for the newest release unless ``SOPS_DISABLE_VERSION_CHECK=1``)."""
    return _tool("sops")


def local_kms_binary() -> Path:
    return _tool("local-kms")


def _answers_http(url: str) -> str | None:
    """None once an HTTP server answers at ``url`` (any status: a GET is no KMS call), so
    that a port taken by another listener is not mistaken for the server."""
    status, body = http_get(url, timeout=1.0)
    return None if status else body.decode(errors="replace")


@contextlib.contextmanager
def _serving(name: str, argv: list[str], port: int, log_dir: Path) -> Iterator[str]:
    """Run ``argv`` until the ``with`` block ends; its URL once it answers HTTP there."""
    group = ProcessGroup(log_dir, AwsToolsError)
    try:
        group.start(name, argv)
        url = f"http://127.0.0.1:{port}"

        def ready() -> str | None:
            group.require_alive(name)
            return _answers_http(url)

        wait_until(
            f"{name} on port {port}",
            ready,
            time.monotonic() + _START_TIMEOUT_S,
            error=AwsToolsError,
            report=group.logs_report,
        )
        yield url
    finally:
        group.stop_all(timeout=_STOP_TIMEOUT_S)


@contextlib.contextmanager
def local_kms_server(port: int, **environment: str) -> Iterator[str]:
    """local-kms on ``port`` with a fresh data directory, for one ``with`` block;
    ``environment``: more variables for it (the benchmark sets ``GOMAXPROCS``).

    local-kms reads its settings from the environment only (``PORT``, ``KMS_DATA_PATH`` for
    its LevelDB database, ``KMS_SEED_PATH``, ``KMS_REGION``, ``KMS_ACCOUNT_ID``), so it is
    started through ``env``, which execs it (the pid stays the server's). It binds every
    interface (``:PORT``); the tests only ever reach it on 127.0.0.1.
    """
    with tempfile.TemporaryDirectory(prefix="local-kms-") as scratch:
        root = Path(scratch)
        settings = {
            "PORT": str(port),
            "KMS_DATA_PATH": str(root / "data"),
            # No seed file there: an empty store, whatever /init/seed.yaml (its default) holds.
            "KMS_SEED_PATH": str(root / "seed.yaml"),
            "KMS_REGION": REGION,
            "KMS_ACCOUNT_ID": LOCAL_KMS_ACCOUNT_ID,
            **environment,
        }
        argv = ["env", *(f"{k}={v}" for k, v in settings.items()), str(local_kms_binary())]
        with _serving("local-kms", argv, port, root) as url:
            yield url


@contextlib.contextmanager
def moto_server(port: int) -> Iterator[str]:
    """moto's server (all of its mocked services, KMS among them, in memory) on
    127.0.0.1:``port``, for one ``with`` block."""
    binary = Path(sys.executable).parent / "moto_server"
    if not binary.is_file():
        raise AwsToolsError(f"no {binary}: install the dev extra (`make .venv/.installed-stamp`)")
    with tempfile.TemporaryDirectory(prefix="moto-server-") as scratch:
        argv = [str(binary), "-H", "127.0.0.1", "-p", str(port)]
        with _serving("moto-server", argv, port, Path(scratch)) as url:
            yield url

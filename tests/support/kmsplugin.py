"""The KMS v2 plugin in a test: a real gRPC server on a unix socket, and kube-apiserver's side.

:func:`serving` starts :class:`PluginServer` over a servicer of a given :class:`KeyService`
on a socket path (under ``tmp_path``), and yields a
:class:`~kms_operator.kmsplugin.protocol.KmsPluginClient` on it (the generated client stub);
the server is stopped and the socket gone afterwards. :func:`refusal` runs a call that must fail
and returns its gRPC status code and details. :class:`PluginProcess` runs ``kms-operator
kms-plugin serve`` and its ``keys`` commands as real processes (integration tests).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from kms_operator.keys.service import KeyService
from kms_operator.kmsplugin import protocol
from kms_operator.kmsplugin.nodekeys import DEFAULT_KEY_NAME
from kms_operator.kmsplugin.server import PluginServer
from kms_operator.kmsplugin.servicer import KmsPluginServicer

_KMS_OPERATOR = [sys.executable, "-m", "kms_operator.cli.operator_cli"]


@contextmanager
def serving(
    service: KeyService, socket_path: Path, key_name: str = DEFAULT_KEY_NAME, **options: Any
) -> Iterator[protocol.KmsPluginClient]:
    server = PluginServer(KmsPluginServicer(service, key_name, **options), socket_path)
    server.start()
    try:
        with protocol.connect(socket_path) as client:
            yield client
    finally:
        server.stop(grace=1.0)
    assert not socket_path.exists()


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a call that must be refused."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    raise AssertionError("the call was not refused")


class PluginProcess:
    """``kms-operator kms-plugin serve`` as a real process on its own files under ``work_dir``,
    and the ``keys`` commands as real processes on the same files."""

    def __init__(self, work_dir: Path, key_name: str = DEFAULT_KEY_NAME) -> None:
        self.key_name = key_name
        self.store_path = work_dir / "lib" / "store.db"
        self.root_key_file = work_dir / "etc" / "root.key"
        self.socket_path = work_dir / "run" / "kms.sock"
        self.log_file = work_dir / "kms-plugin.log"
        self._process: subprocess.Popen[bytes] | None = None

    def _files(self) -> list[str]:
        return [
            "--store-path", str(self.store_path),
            "--root-key-file", str(self.root_key_file),
        ]  # fmt: skip

    def keys(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``kms-operator kms-plugin keys COMMAND …`` (``--key`` added unless listing)."""
        key = [] if command == "list" else ["--key", self.key_name]
        return subprocess.run(
            [*_KMS_OPERATOR, "kms-plugin", "keys", command, *self._files(), *key, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def _serve_argv(self) -> list[str]:
        return [
            *_KMS_OPERATOR, "kms-plugin", "serve",
            "--socket", str(self.socket_path), *self._files(), "--key", self.key_name,
            "--log-format", "json", "--log-level", "DEBUG",
        ]  # fmt: skip

    def serve_until_exit(self, *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``serve`` expecting it to refuse to start."""
        return subprocess.run(
            self._serve_argv(), capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self, *, timeout: float = 60.0) -> None:
        """Start ``serve`` and wait until Status answers on the socket."""
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                self._serve_argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise AssertionError(f"serve exited with {self._process.returncode}:\n{self.log}")
            if self.socket_path.exists() and self._answers():
                return
            time.sleep(0.1)
        raise AssertionError(f"serve did not answer on {self.socket_path} in {timeout} s")

    def _answers(self) -> bool:
        with protocol.connect(self.socket_path, timeout=2.0) as client:
            try:
                client.status()
            except grpc.RpcError:
                return False
        return True

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def stop(self, *, timeout: float = 20.0) -> int:
        """SIGTERM, and the exit code."""
        assert self._process is not None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
        return self._process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: the process leaves its socket file behind."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)

    @property
    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

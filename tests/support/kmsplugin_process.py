"""The real ``kms-operator kms-plugin`` on a node of its own: a directory holding its store
file and root key, ``keys`` verbs run as processes, ``serve`` as a process on a unix socket
(stopped by its pid), and its gRPC verbs called over the socket, as kube-apiserver calls them.

    plugin = KmsPluginProcess(tmp_path / "node-a", tmp_path / "kms.sock")
    plugin.keys("create")
    with plugin:
        plugin.status().key_id
        plugin.decrypt(plugin.encrypt(b"..."))

Used by the integration tests and by ``bench/bench_kms_apiserver.py``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc

from kms_operator.devcluster.processes import Process
from kms_operator.kmsplugin.v2 import api_pb2, api_pb2_grpc

__all__ = ["KmsPluginError", "KmsPluginProcess"]

#: ``python -m`` of the ``kms-operator`` console script.
CLI = [sys.executable, "-m", "kms_operator.cli.operator_cli", "kms-plugin"]


class KmsPluginError(RuntimeError):
    """A ``kms-plugin`` command failed or its server did not come up."""


class KmsPluginProcess:
    def __init__(
        self,
        node_dir: Path,
        socket_path: Path,
        *,
        key: str | None = None,
        start_timeout: float = 30,
    ) -> None:
        node_dir.mkdir(parents=True, exist_ok=True)
        self.node_dir = node_dir
        self.socket_path = socket_path
        self.key = key
        self.start_timeout = start_timeout
        self.store_path = node_dir / "store.db"
        self.root_key_file = node_dir / "root.key"
        self._process: Process | None = None
        self._starts = 0

    def _node_args(self) -> list[str]:
        args = ["--store-path", str(self.store_path), "--root-key-file", str(self.root_key_file)]
        return [*args, "--key", self.key] if self.key else args

    def keys(self, verb: str, *args: str) -> str:
        """``kms-operator kms-plugin keys VERB ARGS`` on this node's store; its stdout."""
        proc = subprocess.run(
            [*CLI, "keys", verb, *self._node_args(), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            raise KmsPluginError(
                f"kms-plugin keys {verb} failed ({proc.returncode}): {proc.stderr}"
            )
        return proc.stdout

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.alive()

    def start(self) -> Self:
        """Start ``serve`` and wait until ``Status`` answers healthz ``ok``."""
        if self._process is not None:
            raise KmsPluginError("the plugin is already started")
        self._starts += 1
        self._process = Process(
            "kms-plugin",
            [*CLI, "serve", "--socket", str(self.socket_path), *self._node_args()],
            self.node_dir / f"kms-plugin-{self._starts}.log",
        )
        deadline = time.monotonic() + self.start_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self._process.alive():
                tail = self._process.log_tail()
                self.stop()
                raise KmsPluginError(f"kms-plugin serve exited:\n{tail}")
            if self.socket_path.exists():
                try:
                    status = self.status(timeout=2)
                except grpc.RpcError as exc:
                    last = f"{exc.code()}: {exc.details()}"
                else:
                    if status.healthz == "ok":
                        return self
                    last = f"healthz {status.healthz!r}"
            time.sleep(0.1)
        tail = self._process.log_tail()
        self.stop()
        raise KmsPluginError(f"kms-plugin serve not healthy in time (last: {last}):\n{tail}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop(timeout=10)
            self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @contextlib.contextmanager
    def _stub(self) -> Iterator[api_pb2_grpc.KeyManagementServiceStub]:
        # A new channel per call: the plugin may have restarted on the socket in between.
        with grpc.insecure_channel(f"unix://{self.socket_path}") as channel:
            yield api_pb2_grpc.KeyManagementServiceStub(channel)

    def status(self, timeout: float = 5) -> api_pb2.StatusResponse:
        with self._stub() as stub:
            response: api_pb2.StatusResponse = stub.Status(api_pb2.StatusRequest(), timeout=timeout)
            return response

    def encrypt(self, plaintext: bytes) -> api_pb2.EncryptResponse:
        with self._stub() as stub:
            response: api_pb2.EncryptResponse = stub.Encrypt(
                api_pb2.EncryptRequest(plaintext=plaintext, uid=str(uuid.uuid4())), timeout=5
            )
            return response

    def decrypt(self, encrypted: api_pb2.EncryptResponse) -> bytes:
        """Decrypt what :meth:`encrypt` (of this plugin or another) answered."""
        request = api_pb2.DecryptRequest(
            ciphertext=encrypted.ciphertext,
            uid=str(uuid.uuid4()),
            key_id=encrypted.key_id,
            annotations=dict(encrypted.annotations),
        )
        with self._stub() as stub:
            response: api_pb2.DecryptResponse = stub.Decrypt(request, timeout=5)
            return response.plaintext

    def log_tail(self) -> str:
        return self._process.log_tail() if self._process is not None else ""

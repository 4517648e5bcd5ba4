"""The plugin's gRPC server on a unix socket (kube-apiserver's ``endpoint: unix://…``).

The socket is created with mode 0600 (the umask is narrowed while gRPC binds it, so it is
never wider, even for an instant) in a directory created 0700 when absent: on the node, only
root (kube-apiserver) may call the plugin. A socket file left by a plugin that died is removed
at start; a socket some live process still answers on, or a path that is not a socket, is
refused rather than taken over. The socket is removed again on stop, when it is still ours.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from kms_operator.errors import KmsError

from . import protocol

log = logging.getLogger(__name__)

#: Calls served at once. kube-apiserver sends its Decrypts in parallel at start-up; each is
#: short CPU work (one AES-GCM open), so a few threads keep the socket busy.
MAX_WORKERS = 8
#: On stop, calls in flight get this long to finish.
STOP_GRACE_SECONDS = 5.0


class SocketError(KmsError):
    """The socket path cannot be served (in use, not a socket, cannot bind)."""

    code = "SocketError"


class PluginServer:
    """A ``grpc.Server`` for one servicer on ``socket_path``; :meth:`start`, then :meth:`stop`."""

    def __init__(
        self,
        servicer: protocol.KeyManagementServicer,
        socket_path: Path,
        *,
        max_workers: int = MAX_WORKERS,
    ) -> None:
        self.socket_path = socket_path
        self._servicer = servicer
        self._max_workers = max_workers
        self._server: Any = None
        self._inode: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"PluginServer({str(self.socket_path)!r})"

    def start(self) -> None:
        path = self.socket_path
        _prepare(path)
        server = grpc.server(
            futures.ThreadPoolExecutor(self._max_workers, thread_name_prefix="kms-plugin")
        )
        protocol.add_to_server(self._servicer, server)
        previous = os.umask(0o177)
        try:
            bound = server.add_insecure_port(protocol.unix_target(path))
        except RuntimeError as exc:
            raise SocketError(f"cannot serve on {path}: {exc}") from None
        finally:
            os.umask(previous)
        if not bound:
            raise SocketError(f"cannot serve on {path}")
        server.start()
        path.chmod(0o600)  # whatever umask gRPC's own bind used
        info = path.stat()
        self._inode = (info.st_dev, info.st_ino)
        self._server = server
        log.info("KMS v2 plugin listening on unix://%s", path)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop serving (calls in flight get ``grace`` seconds) and remove the socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop(grace).wait()
        try:
            info = self.socket_path.stat()
        except FileNotFoundError:
            info = None
        if info is not None and (info.st_dev, info.st_ino) == self._inode:
            self.socket_path.unlink()
        log.info("KMS v2 plugin on %s stopped", self.socket_path)


def _prepare(path: Path) -> None:
    """Make the socket's directory (0700 when new); remove a stale socket, refuse anything else."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketError(f"{path} exists and is not a socket: refusing to replace it")
    if _answers(path):
        raise SocketError(f"another process serves {path}: stop it first")
    path.unlink()
    log.info("removed the stale socket %s (left by a plugin that did not stop)", path)


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True

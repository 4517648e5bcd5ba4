"""Decrypt latency of the KMS v2 plugin over its unix socket, against bare baselines.

Three things answer kube-apiserver's ``Decrypt`` of a 32-byte DEK seed in the same run:

* ``kms-plugin``: the real ``kms-operator kms-plugin serve`` process (its own store and root
  key in a temporary directory, cache warm), called over its unix socket;
* ``bare gRPC``: a process serving the same generated ``v2.KeyManagementService`` whose
  Decrypt is nothing but ``AESGCM(key).decrypt`` of a blob of the same shape (no key lookup,
  no state checks, no key_id check), over a unix socket too: what gRPC and Python cost;
* ``plugin, no gRPC``: the plugin's servicer called in this process (its key_id and header
  checks and the domain's decrypt): what the plugin itself adds to the transport;
* ``in-process AES-GCM``: the decrypt alone, no gRPC, no socket.

Each socket is called by two clients: ``go`` is ``bench/kmsv2client`` (grpc-go and the
``k8s.io/kms`` generated client: what kube-apiserver runs), built with the Go toolchain when
there is one; ``python`` is this process's grpcio client, whose own cost is part of its numbers.
Calls are sequential from one client thread, then from ``--concurrency`` threads, as
kube-apiserver decrypts in parallel at start-up. The goal is a plugin p99 of at most 1 ms
(Kubernetes asks for under 10 ms).

    python bench/bench_kms_plugin.py [--calls 5000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms_operator.keys.service import KeyService
from kms_operator.kmsplugin import protocol
from kms_operator.kmsplugin.nodekeys import DEFAULT_KEY_NAME, NodeKeys
from kms_operator.kmsplugin.servicer import KmsPluginServicer
from kms_operator.store.rootkey import load_root_key_file
from kms_operator.store.sqlite import SqliteKeyStore

GOAL_P99_MS = 1.0
DEK_SEED = os.urandom(32)
_HEADER = b"KMS1" + bytes(20)  # the blob's fixed prefix: magic, key id, version
_NONCE = 12
_REPO = Path(__file__).resolve().parents[1]
_KMS_OPERATOR = [sys.executable, "-m", "kms_operator.cli.operator_cli"]


@dataclass(frozen=True)
class GoRow:
    """What bench/kmsv2client measured."""

    p50_ms: float
    p99_ms: float
    rate: float


@dataclass(frozen=True)
class Latencies:
    """Per-call seconds of one run."""

    seconds: list[float]
    wall: float

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.seconds) * 1000

    @property
    def p99_ms(self) -> float:
        return statistics.quantiles(self.seconds, n=100)[98] * 1000

    @property
    def rate(self) -> float:
        return len(self.seconds) / self.wall


#: (target, client, client threads, what was measured)
Row = tuple[str, str, int, Latencies | GoRow]


def timed(call: Callable[[], object], calls: int, concurrency: int = 1) -> Latencies:
    """``calls`` calls of ``call`` (after a warm-up), from ``concurrency`` threads."""
    for _ in range(min(200, calls)):
        call()
    per_thread = calls // concurrency
    results: list[list[float]] = [[] for _ in range(concurrency)]

    def worker(out: list[float]) -> None:
        for _ in range(per_thread):
            start = time.perf_counter()
            call()
            out.append(time.perf_counter() - start)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return Latencies([s for out in results for s in out], wall)


# -- the bare baseline: the same service, nothing but AES-GCM ----------------------------


class BareServicer(protocol.KeyManagementServicer):
    """``v2.KeyManagementService`` doing only AES-256-GCM under one key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def Status(
        self, request: protocol.StatusRequest, context: protocol.ServicerContext
    ) -> protocol.StatusResponse:
        return protocol.StatusResponse(version="v2", healthz="ok", key_id="bare:1")

    def Encrypt(
        self, request: protocol.EncryptRequest, context: protocol.ServicerContext
    ) -> protocol.EncryptResponse:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, request.plaintext, _HEADER + nonce)
        return protocol.EncryptResponse(ciphertext=_HEADER + nonce + sealed, key_id="bare:1")

    def Decrypt(
        self, request: protocol.DecryptRequest, context: protocol.ServicerContext
    ) -> protocol.DecryptResponse:
        blob = request.ciphertext
        header = len(_HEADER) + _NONCE
        plaintext = self._aead.decrypt(blob[len(_HEADER) : header], blob[header:], blob[:header])
        return protocol.DecryptResponse(plaintext=plaintext)


def serve_bare(socket_path: Path) -> None:
    """The baseline server's process: serve until stdin closes."""
    server = grpc.server(futures.ThreadPoolExecutor(8))
    protocol.add_to_server(BareServicer(os.urandom(32)), server)
    server.add_insecure_port(protocol.unix_target(socket_path))
    server.start()
    sys.stdin.read()
    server.stop(0).wait()


# -- processes ---------------------------------------------------------------------------


def _wait_for_socket(process: subprocess.Popen[bytes], socket_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        if socket_path.exists():
            with protocol.connect(socket_path, timeout=2.0) as client:
                try:
                    if client.status().healthz == protocol.HEALTHZ_OK:
                        return
                except grpc.RpcError:
                    pass
        time.sleep(0.1)
    raise SystemExit(f"nothing answered on {socket_path}")


@contextmanager
def plugin_process(work: Path) -> Iterator[Path]:
    """``kms-operator kms-plugin serve`` on a new store; yields its socket."""
    files = [
        "--store-path", str(work / "store.db"),
        "--root-key-file", str(work / "root.key"),
    ]  # fmt: skip
    subprocess.run([*_KMS_OPERATOR, "kms-plugin", "keys", "create", *files], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    socket_path = work / "kms.sock"
    process = subprocess.Popen(
        [*_KMS_OPERATOR, "kms-plugin", "serve", "--socket", str(socket_path), *files,
         "--log-level", "WARNING"],
    )  # fmt: skip
    try:
        _wait_for_socket(process, socket_path)
        yield socket_path
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def bare_process(work: Path) -> Iterator[Path]:
    socket_path = work / "bare.sock"
    process = subprocess.Popen(
        [sys.executable, __file__, "--bare-server", str(socket_path)], stdin=subprocess.PIPE
    )
    try:
        _wait_for_socket(process, socket_path)
        yield socket_path
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)


def decrypt_over(socket_path: Path, calls: int, concurrency: int) -> Latencies:
    """Decrypt latency from this process's Python gRPC client."""
    with protocol.connect(socket_path) as client:
        sealed = client.encrypt(DEK_SEED)
        return timed(lambda: client.decrypt(sealed.ciphertext, sealed.key_id), calls, concurrency)


def go_client() -> Path | None:
    """bench/kmsv2client built (grpc-go and k8s.io/kms, as kube-apiserver), or None without Go."""
    go = shutil.which("go")
    if go is None:
        return None
    binary = _REPO / ".envtest" / "bench" / "kmsv2client"
    subprocess.run(
        [go, "build", "-o", str(binary), "."], cwd=_REPO / "bench" / "kmsv2client", check=True
    )
    return binary


def go_decrypt_over(client: Path, socket_path: Path, calls: int, concurrency: int) -> GoRow:
    """Decrypt latency as kube-apiserver's own client sees it."""
    argv = [str(client), "-socket", str(socket_path), "-calls", str(calls)]
    done = subprocess.run(
        [*argv, "-concurrency", str(concurrency)], check=True, capture_output=True, text=True
    )
    measured = json.loads(done.stdout)
    return GoRow(measured["p50_ms"], measured["p99_ms"], measured["rate"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--bare-server", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server is not None:
        serve_bare(args.bare_server)
        return

    rows: list[Row] = [("in-process AES-GCM", "-", 1, in_process(args.calls))]
    go = go_client()
    with tempfile.TemporaryDirectory(prefix="kms-bench-") as tmp:
        work = Path(tmp)
        rows.append(("plugin, no gRPC", "-", 1, servicer_in_process(work, args.calls)))
        with plugin_process(work) as plugin_socket, bare_process(work) as bare_socket:
            for threads in sorted({1, args.concurrency}):
                for name, socket_path in (
                    ("bare gRPC", bare_socket),
                    ("kms-plugin", plugin_socket),
                ):
                    if go is not None:
                        measured = go_decrypt_over(go, socket_path, args.calls, threads)
                        rows.append((name, "go", threads, measured))
                    measured = decrypt_over(socket_path, args.calls, threads)
                    rows.append((name, "python", threads, measured))
    print_table(rows, args.calls, with_go=go is not None)


def in_process(calls: int) -> Latencies:
    aead, nonce = AESGCM(os.urandom(32)), os.urandom(_NONCE)
    sealed = aead.encrypt(nonce, DEK_SEED, _HEADER + nonce)
    return timed(lambda: aead.decrypt(nonce, sealed, _HEADER + nonce), calls)


def servicer_in_process(work: Path, calls: int) -> Latencies:
    """The plugin's own Decrypt (key_id and header checks, the domain's decrypt), no gRPC."""
    store = SqliteKeyStore(work / "in-process.db", load_root_key_file(work / "in-process.key"))
    try:
        service = KeyService(store)
        NodeKeys(service).create(DEFAULT_KEY_NAME)
        servicer = KmsPluginServicer(service, DEFAULT_KEY_NAME)
        sealed = servicer.Encrypt(protocol.EncryptRequest(plaintext=DEK_SEED), None)
        request = protocol.DecryptRequest(ciphertext=sealed.ciphertext, key_id=sealed.key_id)
        return timed(lambda: servicer.Decrypt(request, None), calls)
    finally:
        store.close()


def print_table(rows: list[Row], calls: int, *, with_go: bool) -> None:
    print(f"Decrypt of a {len(DEK_SEED)}-byte DEK seed, {calls} calls per row")
    if not with_go:
        print("(no Go toolchain: the rows of grpc-go, kube-apiserver's own client, are left out)")
    head = ("target", "client", "threads", "p50 ms", "p99 ms", "calls/s")
    print(f"{head[0]:<20} {head[1]:<7} " + " ".join(f"{h:>8}" for h in head[2:]) + "  p99<=1ms")
    for name, client, threads, measured in rows:
        goal = ("yes" if measured.p99_ms <= GOAL_P99_MS else "NO") if name == "kms-plugin" else ""
        print(
            f"{name:<20} {client:<7} {threads:>8} {measured.p50_ms:>8.3f} "
            f"{measured.p99_ms:>8.3f} {measured.rate:>8.0f}  {goal}"
        )


if __name__ == "__main__":
    main()

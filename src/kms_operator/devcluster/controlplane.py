"""A real, local Kubernetes control plane (etcd + kube-apiserver) for tests and local runs.

The binaries are found the envtest way: ``KUBEBUILDER_ASSETS`` (or ``KMS_ASSETS_DIR``), else
``<repo>/.envtest/bin`` as built by ``hack/controlplane/ensure.sh``.

    with LocalControlPlane() as cp:
        print(cp.kubeconfig, cp.server)

``python -m kms_operator.controlplane`` starts one and waits for Ctrl-C.

This module uses only the standard library, ``cryptography`` and ``pyyaml``; it imports neither
Kopf nor the Kubernetes client.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import datetime
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Self

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from kms_operator import pki

__all__ = [
    "REQUIRED_BINARIES",
    "ControlPlaneError",
    "LocalControlPlane",
    "find_assets",
    "main",
]

#: Binaries that must be in the assets directory.
REQUIRED_BINARIES: tuple[str, ...] = ("kube-apiserver", "etcd")
ENSURE_SCRIPT = "hack/controlplane/ensure.sh"
ADMIN_USER = "kms-admin"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
_LOG_TAIL_LINES = 40


class ControlPlaneError(RuntimeError):
    """The control plane cannot be found, started or reached."""


# --------------------------------------------------------------------------------------------
# Finding the binaries
# --------------------------------------------------------------------------------------------


def _repo_root_candidates() -> Iterator[Path]:
    seen: set[Path] = set()
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for directory in (start, *start.parents):
            if directory in seen:
                continue
            seen.add(directory)
            if (directory / ENSURE_SCRIPT).is_file() or (directory / ".envtest" / "bin").is_dir():
                yield directory


def _missing_binaries(directory: Path) -> list[str]:
    return [
        name
        for name in REQUIRED_BINARIES
        if not ((directory / name).is_file() and os.access(directory / name, os.X_OK))
    ]


def find_assets() -> Path:
    """Return the directory holding ``kube-apiserver`` and ``etcd`` (and usually ``kubectl``).

    Looks at ``KUBEBUILDER_ASSETS``, then ``KMS_ASSETS_DIR``, then ``<repo>/.envtest/bin``.
    A directory named by an environment variable is authoritative: if it lacks a binary, this
    fails rather than falling back silently.
    """
    hint = (
        f"run `{ENSURE_SCRIPT}` to build them into .envtest/bin, or point KUBEBUILDER_ASSETS "
        "at a directory holding kube-apiserver and etcd"
    )
    for var in ("KUBEBUILDER_ASSETS", "KMS_ASSETS_DIR"):
        value = os.environ.get(var)
        if value:
            directory = Path(value).expanduser().resolve()
            missing = _missing_binaries(directory)
            if missing:
                raise ControlPlaneError(
                    f"{var}={value} does not hold executable {', '.join(missing)}; {hint}"
                )
            return directory
    looked: list[str] = []
    for root in _repo_root_candidates():
        directory = root / ".envtest" / "bin"
        looked.append(str(directory))
        if not _missing_binaries(directory):
            return directory
    where = ", ".join(looked) if looked else "no .envtest/bin found above the current directory"
    raise ControlPlaneError(
        f"control plane binaries ({', '.join(REQUIRED_BINARIES)}) not found "
        f"(KUBEBUILDER_ASSETS and KMS_ASSETS_DIR unset; looked in: {where}); {hint}"
    )


# --------------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------------


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


class _Pki:
    """A throw-away CA, the apiserver's serving cert, an admin client cert, and SA keys."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        not_before = now - datetime.timedelta(minutes=5)
        not_after = now + datetime.timedelta(days=7)

        ca_key, ca_cert = pki.new_ca("kms-local-control-plane-ca", not_before, not_after)
        serving_key, serving_cert = pki.issue(
            ca_key,
            ca_cert,
            pki.name("kube-apiserver"),
            ExtendedKeyUsageOID.SERVER_AUTH,
            not_before=not_before,
            not_after=not_after,
            sans=pki.subject_alternative_names(
                ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
                ["127.0.0.1", "10.0.0.1"],
            ),
        )
        admin_key, admin_cert = pki.issue(
            ca_key,
            ca_cert,
            pki.name(ADMIN_USER, organization="system:masters"),
            ExtendedKeyUsageOID.CLIENT_AUTH,
            not_before=not_before,
            not_after=not_after,
        )
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

        self.ca_cert_pem = pki.cert_pem(ca_cert)
        self.admin_cert_pem = pki.cert_pem(admin_cert)
        self.admin_key_pem = pki.key_pem(admin_key)
        self.ca_file = _write(directory / "ca.crt", self.ca_cert_pem)
        self.serving_cert_file = _write(directory / "apiserver.crt", pki.cert_pem(serving_cert))
        self.serving_key_file = _write(directory / "apiserver.key", pki.key_pem(serving_key), True)
        self.admin_cert_file = _write(directory / "admin.crt", self.admin_cert_pem)
        self.admin_key_file = _write(directory / "admin.key", self.admin_key_pem, True)
        self.sa_key_file = _write(directory / "sa.key", pki.key_pem(sa_key), True)
        self.sa_pub_file = _write(
            directory / "sa.pub",
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when this thread dies.

    Only used from the main thread (PR_SET_PDEATHSIG fires when the *thread* that forked
    exits), on Linux; elsewhere the atexit handler and ``stop()`` are the safety net.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)

    return preexec


class _Process:
    def __init__(self, name: str, argv: list[str], log_file: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_file = log_file
        self._log: IO[bytes] = log_file.open("wb")
        # preexec_fn only calls prctl(PR_SET_PDEATHSIG): async-signal-safe enough.
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(),  # noqa: PLW1509
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float) -> None:
        try:
            if self.popen.poll() is None:
                self._signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self.popen.wait(timeout=timeout)
            else:
                # The leader is gone; make sure nothing else in its group lingers.
                self._signal(signal.SIGKILL)
        finally:
            self._log.close()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)


# --------------------------------------------------------------------------------------------
# The control plane
# --------------------------------------------------------------------------------------------


class LocalControlPlane:
    """etcd and kube-apiserver on loopback, with an admin kubeconfig.

    Attributes once started: ``kubeconfig`` (Path of an admin kubeconfig, certificate data
    embedded), ``server`` (``https://127.0.0.1:<port>``), ``ca_file``, ``client_cert_file``,
    ``client_key_file``, ``etcd_url``, ``work_dir`` (holding ``etcd.log`` and
    ``kube-apiserver.log``), ``assets`` (the binaries' directory).

    The admin user is ``kms-admin`` in group ``system:masters``. The API server runs with
    ``--authorization-mode=RBAC`` and a service-account issuer and keys, so TokenRequest,
    TokenReview and SubjectAccessReview work. No controller-manager or scheduler runs: pods are
    never scheduled, namespaces are never finalized and garbage collection does not happen.
    """

    def __init__(
        self,
        assets: Path | None = None,
        *,
        start_timeout: float = 90.0,
        stop_timeout: float = 10.0,
        work_dir: Path | None = None,
        keep_work_dir: bool | None = None,
        extra_apiserver_args: list[str] | None = None,
    ) -> None:
        self._assets_arg = assets
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._work_dir_arg = work_dir
        if keep_work_dir is None:
            keep_work_dir = os.environ.get("KMS_CONTROLPLANE_KEEP", "") not in ("", "0")
        self.keep_work_dir = keep_work_dir
        self.extra_apiserver_args = list(extra_apiserver_args or [])
        self._etcd: _Process | None = None
        self._apiserver: _Process | None = None
        self._work_dir: Path | None = None
        self._owns_work_dir = False
        self._assets: Path | None = None
        self._pki: _Pki | None = None
        self._kubeconfig: Path | None = None
        self._server: str | None = None
        self._etcd_url: str | None = None
        self._lock = threading.Lock()
        self._atexit_registered = False

    # -- public properties --------------------------------------------------------------------

    def _started(self) -> _Pki:
        if self._pki is None or self._server is None:
            raise ControlPlaneError("the control plane is not started")
        return self._pki

    @property
    def running(self) -> bool:
        return bool(
            self._apiserver and self._apiserver.alive() and self._etcd and self._etcd.alive()
        )

    @property
    def work_dir(self) -> Path:
        if self._work_dir is None:
            raise ControlPlaneError("the control plane is not started")
        return self._work_dir

    @property
    def assets(self) -> Path:
        if self._assets is None:
            self._assets = (self._assets_arg or find_assets()).resolve()
        return self._assets

    @property
    def kubeconfig(self) -> Path:
        self._started()
        assert self._kubeconfig is not None
        return self._kubeconfig

    @property
    def server(self) -> str:
        self._started()
        assert self._server is not None
        return self._server

    @property
    def etcd_url(self) -> str:
        self._started()
        assert self._etcd_url is not None
        return self._etcd_url

    @property
    def ca_file(self) -> Path:
        return self._started().ca_file

    @property
    def client_cert_file(self) -> Path:
        return self._started().admin_cert_file

    @property
    def client_key_file(self) -> Path:
        return self._started().admin_key_file

    @property
    def kubectl_path(self) -> Path:
        path = self.assets / "kubectl"
        if not path.is_file():
            raise ControlPlaneError(f"kubectl is not in {self.assets}; run `{ENSURE_SCRIPT}`")
        return path

    def env(self) -> dict[str, str]:
        """A copy of ``os.environ`` with ``KUBECONFIG`` and ``KUBEBUILDER_ASSETS`` set."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["KUBEBUILDER_ASSETS"] = str(self.assets)
        return env

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl --kubeconfig <admin> ARGS`` and return its completed process."""
        proc = subprocess.run(
            [str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Start etcd and kube-apiserver and wait until ``/readyz`` is ok."""
        with self._lock:
            if self._apiserver is not None:
                raise ControlPlaneError("the control plane is already started")
            assets = self.assets
            missing = _missing_binaries(assets)
            if missing:
                raise ControlPlaneError(
                    f"{assets} does not hold executable {', '.join(missing)}; run `{ENSURE_SCRIPT}`"
                )
            if self._work_dir_arg is not None:
                self._work_dir = self._work_dir_arg.resolve()
                self._work_dir.mkdir(parents=True, exist_ok=True)
                self._owns_work_dir = False
            else:
                self._work_dir = Path(tempfile.mkdtemp(prefix="kms-controlplane-"))
                self._owns_work_dir = True
            if not self._atexit_registered:
                atexit.register(self.stop)
                self._atexit_registered = True
        try:
            self._pki = _Pki(self._work_dir / "pki")
            self._start_processes(assets, self._work_dir)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_processes(self, assets: Path, work_dir: Path) -> None:
        deadline = time.monotonic() + self.start_timeout
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                self._start_etcd(assets, work_dir, deadline)
                self._start_apiserver(assets, work_dir, deadline)
                self._write_kubeconfig(work_dir)
                return
            except _PortClash:
                # Another process took a port we picked between probing and binding: retry.
                self._stop_processes()
                if attempt == attempts:
                    raise ControlPlaneError(
                        f"could not bind free loopback ports after {attempts} attempts"
                    ) from None

    def _start_etcd(self, assets: Path, work_dir: Path, deadline: float) -> None:
        client_port, peer_port = _free_port(), _free_port()
        data_dir = work_dir / "etcd-data"
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(mode=0o700)
        self._etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._etcd = _Process(
            "etcd",
            [
                str(assets / "etcd"),
                "--name=kms-local",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={self._etcd_url}",
                f"--advertise-client-urls={self._etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=kms-local={peer_url}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            work_dir / "etcd.log",
        )
        self._wait_http(
            self._etcd,
            f"{self._etcd_url}/health",
            lambda status, body: status == 200 and b'"health":"true"' in body,
            deadline,
            None,
        )

    def _start_apiserver(self, assets: Path, work_dir: Path, deadline: float) -> None:
        pki = self._started_pki()
        port = _free_port()
        self._server = f"https://127.0.0.1:{port}"
        cert_dir = work_dir / "apiserver-certs"
        cert_dir.mkdir(exist_ok=True)
        assert self._etcd_url is not None
        self._apiserver = _Process(
            "kube-apiserver",
            [
                str(assets / "kube-apiserver"),
                f"--etcd-servers={self._etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={cert_dir}",
                f"--tls-cert-file={pki.serving_cert_file}",
                f"--tls-private-key-file={pki.serving_key_file}",
                f"--client-ca-file={pki.ca_file}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.sa_pub_file}",
                f"--service-account-signing-key-file={pki.sa_key_file}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                # No kubelet or controller-manager: nothing serves the kubernetes Service.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
                *self.extra_apiserver_args,
            ],
            work_dir / "kube-apiserver.log",
        )
        self._wait_http(
            self._apiserver,
            f"{self._server}/readyz",
            lambda status, body: status == 200 and body.strip() == b"ok",
            deadline,
            self._ssl_context(),
        )

    def _started_pki(self) -> _Pki:
        if self._pki is None:
            raise ControlPlaneError("the control plane is not started")
        return self._pki

    def _ssl_context(self) -> ssl.SSLContext:
        pki = self._started_pki()
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        context.load_cert_chain(str(pki.admin_cert_file), str(pki.admin_key_file))
        return context

    def _wait_http(
        self,
        proc: _Process,
        url: str,
        ready: Callable[[int, bytes], bool],
        deadline: float,
        context: ssl.SSLContext | None,
    ) -> None:
        last = "no answer yet"
        while True:
            if not proc.alive():
                log = _tail(proc.log_file)
                if "address already in use" in log:
                    raise _PortClash(proc.name)
                raise ControlPlaneError(
                    f"{proc.name} exited with code {proc.popen.returncode} before it was ready"
                    f" ({url}).\n{self._logs_report()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=5, context=context) as response:  # noqa: S310
                    status, body = response.status, response.read()
            except urllib.error.HTTPError as exc:
                status, body = exc.code, exc.read()
            except (OSError, ssl.SSLError) as exc:
                status, body = 0, str(exc).encode()
            if ready(status, body):
                return
            last = f"HTTP {status}: {body.decode(errors='replace')[-2000:]}"
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{proc.name} not ready at {url} within {self.start_timeout:.0f}s; "
                    f"last answer: {last}\n{self._logs_report()}"
                )
            time.sleep(0.25)

    def _logs_report(self) -> str:
        parts = []
        for proc in (self._etcd, self._apiserver):
            if proc is not None:
                parts.append(f"--- last lines of {proc.log_file} ---\n{_tail(proc.log_file)}")
        return "\n".join(parts)

    def _write_kubeconfig(self, work_dir: Path) -> None:
        pki = self._started_pki()
        assert self._server is not None

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kms-local",
                    "cluster": {
                        "server": self._server,
                        "certificate-authority-data": b64(pki.ca_cert_pem),
                    },
                }
            ],
            "users": [
                {
                    "name": ADMIN_USER,
                    "user": {
                        "client-certificate-data": b64(pki.admin_cert_pem),
                        "client-key-data": b64(pki.admin_key_pem),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "kms-local",
                    "context": {"cluster": "kms-local", "user": ADMIN_USER, "namespace": "default"},
                }
            ],
            "current-context": "kms-local",
            "preferences": {},
        }
        path = work_dir / "kubeconfig"
        _write(path, yaml.safe_dump(config, sort_keys=False).encode(), private=True)
        self._kubeconfig = path

    def _stop_processes(self) -> None:
        for proc in (self._apiserver, self._etcd):
            if proc is not None:
                proc.stop(self.stop_timeout)
        self._apiserver = None
        self._etcd = None

    def stop(self) -> None:
        """Stop kube-apiserver then etcd (SIGTERM, then SIGKILL) and remove the work dir."""
        with self._lock:
            try:
                self._stop_processes()
            finally:
                if self._work_dir is not None and self._owns_work_dir and not self.keep_work_dir:
                    shutil.rmtree(self._work_dir, ignore_errors=True)
                self._pki = None
                self._server = None
                self._kubeconfig = None
                self._etcd_url = None
                if self._atexit_registered:
                    atexit.unregister(self.stop)
                    self._atexit_registered = False


class _PortClash(ControlPlaneError):
    pass


# --------------------------------------------------------------------------------------------
# python -m kms_operator.controlplane
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kms_operator.controlplane",
        description="Start a local etcd + kube-apiserver and wait until Ctrl-C.",
    )
    parser.add_argument("--assets", type=Path, help="directory of kube-apiserver, etcd, kubectl")
    parser.add_argument("--timeout", type=float, default=90.0, help="start timeout (seconds)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir on exit")
    args = parser.parse_args(argv)

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        cp = LocalControlPlane(args.assets, start_timeout=args.timeout, keep_work_dir=args.keep)
        cp.start()
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        kubectl = cp.assets / "kubectl"
        print(f"# control plane ready at {cp.server} (work dir {cp.work_dir})")
        print(f"export KUBECONFIG={cp.kubeconfig}")
        print(f"{kubectl if kubectl.exists() else 'kubectl'} --kubeconfig {cp.kubeconfig} get ns")
        print("# Ctrl-C to stop", flush=True)
        while not stopping.wait(1.0):
            if not cp.running:
                print(f"error: a process exited\n{cp._logs_report()}", file=sys.stderr)
                return 1
    finally:
        cp.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

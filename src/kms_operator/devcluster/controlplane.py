"""A real, local Kubernetes control plane (etcd + kube-apiserver) for tests and local runs.

The binaries are found the envtest way (:mod:`.assets`): ``KUBEBUILDER_ASSETS`` (or
``KMS_ASSETS_DIR``), else ``<repo>/.envtest/bin`` as built by ``hack/controlplane/ensure.sh``.

    with LocalControlPlane() as cp:
        print(cp.kubeconfig, cp.server)

``python -m kms_operator.devcluster.controlplane`` starts one and waits for Ctrl-C.

This module uses only the standard library, ``cryptography`` and ``pyyaml``; it imports neither
Kopf nor the Kubernetes client.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Self

from kms_operator.devcluster.assets import (
    CONTROL_PLANE_BINARIES,
    ENSURE_CONTROL_PLANE_SCRIPT,
    find_binaries,
    find_etcdctl,
    missing_binaries,
)
from kms_operator.devcluster.credentials import ControlPlaneCredentials, write_admin_kubeconfig
from kms_operator.devcluster.processes import (
    Harness,
    ProcessGroup,
    free_port,
    http_get,
    stop_requested,
    wait_until,
)

__all__ = ["ControlPlaneError", "LocalControlPlane", "find_assets", "main"]

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"


class ControlPlaneError(RuntimeError):
    """The control plane cannot be found, started or reached."""


class _PortClash(ControlPlaneError):
    """Another process took a port picked for etcd or kube-apiserver before it was bound."""


def find_assets() -> Path:
    """The directory holding ``kube-apiserver`` and ``etcd`` (and usually ``kubectl``)."""
    return find_binaries(
        "control plane binaries",
        CONTROL_PLANE_BINARIES,
        variables=("KUBEBUILDER_ASSETS", "KMS_ASSETS_DIR"),
        under_repo=".envtest/bin",
        hint=(
            f"run `{ENSURE_CONTROL_PLANE_SCRIPT}` to build them into .envtest/bin, or point "
            "KUBEBUILDER_ASSETS at a directory holding kube-apiserver and etcd"
        ),
        error=ControlPlaneError,
    )


class LocalControlPlane(Harness):
    """etcd and kube-apiserver on loopback, with an admin kubeconfig.

    Attributes once started: ``kubeconfig`` (Path of an admin kubeconfig, certificate data
    embedded), ``server`` (``https://127.0.0.1:<port>``), ``ca_file``, ``client_cert_file``,
    ``client_key_file``, ``etcd_url`` (plain HTTP on loopback, no client certificate),
    ``work_dir`` (holding ``etcd.log`` and ``kube-apiserver.log``), ``assets`` (the binaries'
    directory). :meth:`restart_apiserver` restarts kube-apiserver alone, etcd keeping its data.

    The admin user is ``kms-admin`` in group ``system:masters``. The API server runs with
    ``--authorization-mode=RBAC`` and a service-account issuer and keys, so TokenRequest,
    TokenReview and SubjectAccessReview work. No controller-manager or scheduler runs: pods are
    never scheduled, namespaces are never finalized and garbage collection does not happen.
    """

    name = "the control plane"
    error = ControlPlaneError

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
        self._procs: ProcessGroup | None = None
        self._work_dir: Path | None = None
        self._owns_work_dir = False
        self._assets: Path | None = None
        self._credentials: ControlPlaneCredentials | None = None
        self._kubeconfig: Path | None = None
        self._server: str | None = None
        self._etcd_url: str | None = None
        self._lock = threading.Lock()
        self._atexit_registered = False

    # -- public properties --------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._procs is not None and self._procs.all_alive()

    @property
    def work_dir(self) -> Path:
        return self._part(self._work_dir)

    @property
    def assets(self) -> Path:
        if self._assets is None:
            self._assets = (self._assets_arg or find_assets()).resolve()
        return self._assets

    @property
    def kubeconfig(self) -> Path:
        return self._part(self._kubeconfig)

    @property
    def server(self) -> str:
        return self._part(self._server)

    @property
    def etcd_url(self) -> str:
        return self._part(self._etcd_url)

    @property
    def ca_file(self) -> Path:
        return self._part(self._credentials).ca_file

    @property
    def client_cert_file(self) -> Path:
        return self._part(self._credentials).admin_cert_file

    @property
    def client_key_file(self) -> Path:
        return self._part(self._credentials).admin_key_file

    @property
    def service_account_key_file(self) -> Path:
        """The private key signing service-account tokens (the controller-manager needs it)."""
        return self._part(self._credentials).sa_key_file

    @property
    def kubectl_path(self) -> Path:
        path = self.assets / "kubectl"
        if not path.is_file():
            raise ControlPlaneError(
                f"kubectl is not in {self.assets}; run `{ENSURE_CONTROL_PLANE_SCRIPT}`"
            )
        return path

    @property
    def etcdctl_path(self) -> Path:
        path = find_etcdctl(self.assets)
        if path is None:
            raise ControlPlaneError(
                f"etcdctl is neither in {self.assets} nor in <repo>/.envtest/bin; "
                f"run `{ENSURE_CONTROL_PLANE_SCRIPT}`"
            )
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

    def logs_report(self, lines: int = 40) -> str:
        """The last lines of etcd's and kube-apiserver's logs."""
        return self._procs.logs_report(lines) if self._procs is not None else ""

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        """Start etcd and kube-apiserver and wait until ``/readyz`` is ok."""
        with self._lock:
            if self._procs is not None:
                raise ControlPlaneError("the control plane is already started")
            assets = self.assets
            missing = missing_binaries(assets, CONTROL_PLANE_BINARIES)
            if missing:
                raise ControlPlaneError(
                    f"{assets} does not hold executable {', '.join(missing)}; "
                    f"run `{ENSURE_CONTROL_PLANE_SCRIPT}`"
                )
            if self._work_dir_arg is not None:
                work_dir = self._work_dir_arg.resolve()
                work_dir.mkdir(parents=True, exist_ok=True)
                self._owns_work_dir = False
            else:
                work_dir = Path(tempfile.mkdtemp(prefix="kms-controlplane-"))
                self._owns_work_dir = True
            self._work_dir = work_dir
            self._procs = ProcessGroup(work_dir, ControlPlaneError)
            if not self._atexit_registered:
                atexit.register(self.stop)
                self._atexit_registered = True
        try:
            self._credentials = ControlPlaneCredentials(work_dir / "pki")
            self._start_processes(assets, work_dir, self._procs)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_processes(self, assets: Path, work_dir: Path, procs: ProcessGroup) -> None:
        deadline = time.monotonic() + self.start_timeout
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                self._start_etcd(assets, work_dir, procs, deadline)
                self._start_apiserver(assets, work_dir, procs, deadline, free_port())
                self._kubeconfig = write_admin_kubeconfig(
                    work_dir / "kubeconfig", self.server, self._part(self._credentials)
                )
                return
            except _PortClash:
                # Another process took a port we picked between probing and binding: retry.
                procs.stop_all(self.stop_timeout)
                if attempt == attempts:
                    raise ControlPlaneError(
                        f"could not bind free loopback ports after {attempts} attempts"
                    ) from None

    def _start_etcd(
        self, assets: Path, work_dir: Path, procs: ProcessGroup, deadline: float
    ) -> None:
        client_port, peer_port = free_port(), free_port()
        data_dir = work_dir / "etcd-data"
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(mode=0o700)
        etcd_url = self._etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        procs.start(
            "etcd",
            [
                str(assets / "etcd"),
                "--name=kms-local",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=kms-local={peer_url}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait_ready(
            procs,
            "etcd",
            f"{etcd_url}/health",
            lambda status, body: status == 200 and b'"health":"true"' in body,
            deadline,
        )

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again on the same port (``extra_apiserver_args`` as
        they are now, files they name read again), etcd and its data untouched: the new
        server's caches start cold, so it reads (and decrypts) from etcd what it serves.
        Returns once ``/readyz`` is ok."""
        with self._lock:
            procs = self._part(self._procs)
            port = urllib.parse.urlsplit(self.server).port
            if port is None:
                raise ControlPlaneError(f"no port in {self.server}")
            procs.stop("kube-apiserver", timeout=self.stop_timeout)
            deadline = time.monotonic() + self.start_timeout
            try:
                self._start_apiserver(self.assets, self.work_dir, procs, deadline, port)
            except _PortClash:
                raise ControlPlaneError(
                    f"port {port} was taken while kube-apiserver restarted"
                ) from None

    def _start_apiserver(
        self, assets: Path, work_dir: Path, procs: ProcessGroup, deadline: float, port: int
    ) -> None:
        credentials = self._part(self._credentials)
        self._server = f"https://127.0.0.1:{port}"
        cert_dir = work_dir / "apiserver-certs"
        cert_dir.mkdir(exist_ok=True)
        procs.start(
            "kube-apiserver",
            [
                str(assets / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={cert_dir}",
                f"--tls-cert-file={credentials.serving_cert_file}",
                f"--tls-private-key-file={credentials.serving_key_file}",
                f"--client-ca-file={credentials.ca_file}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={credentials.sa_pub_file}",
                f"--service-account-signing-key-file={credentials.sa_key_file}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                # No kubelet or controller-manager: nothing serves the kubernetes Service.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
                *self.extra_apiserver_args,
            ],
        )
        context = ssl.create_default_context(cafile=str(credentials.ca_file))
        context.load_cert_chain(str(credentials.admin_cert_file), str(credentials.admin_key_file))
        self._wait_ready(
            procs,
            "kube-apiserver",
            f"{self._server}/readyz",
            lambda status, body: status == 200 and body.strip() == b"ok",
            deadline,
            context=context,
        )

    def _wait_ready(
        self,
        procs: ProcessGroup,
        name: str,
        url: str,
        ready: Callable[[int, bytes], bool],
        deadline: float,
        *,
        context: ssl.SSLContext | None = None,
    ) -> None:
        def check() -> str | None:
            if not procs[name].alive() and "address already in use" in procs[name].log_tail():
                raise _PortClash(name)
            procs.require_alive(name)
            status, body = http_get(url, context)
            if ready(status, body):
                return None
            return f"HTTP {status}: {body.decode(errors='replace')[-2000:]}"

        wait_until(
            f"{name} at {url}", check, deadline, error=ControlPlaneError, report=self.logs_report
        )

    def stop(self) -> None:
        """Stop kube-apiserver then etcd (SIGTERM, then SIGKILL) and remove the work dir."""
        with self._lock:
            try:
                if self._procs is not None:
                    self._procs.stop_all(self.stop_timeout)
            finally:
                self._procs = None
                if self._work_dir is not None and self._owns_work_dir and not self.keep_work_dir:
                    shutil.rmtree(self._work_dir, ignore_errors=True)
                self._credentials = None
                self._server = None
                self._kubeconfig = None
                self._etcd_url = None
                if self._atexit_registered:
                    atexit.unregister(self.stop)
                    self._atexit_registered = False


# --------------------------------------------------------------------------------------------
# python -m kms_operator.devcluster.controlplane
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kms_operator.devcluster.controlplane",
        description="Start a local etcd + kube-apiserver and wait until Ctrl-C.",
    )
    parser.add_argument("--assets", type=Path, help="directory of kube-apiserver, etcd, kubectl")
    parser.add_argument("--timeout", type=float, default=90.0, help="start timeout (seconds)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir on exit")
    args = parser.parse_args(argv)

    stopping = stop_requested()
    cp = LocalControlPlane(args.assets, start_timeout=args.timeout, keep_work_dir=args.keep)
    try:
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
                print(f"error: a process exited\n{cp.logs_report()}", file=sys.stderr)
                return 1
    finally:
        cp.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

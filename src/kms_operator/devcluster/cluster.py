"""A real one-node Kubernetes cluster on this machine, for the e2e tier and ``make cluster``.

The control plane is :class:`~.controlplane.LocalControlPlane` (etcd and kube-apiserver); next
to it run kube-controller-manager and kube-scheduler, one node (:mod:`.node`: containerd 2.x
with Debian's runc, the kubelet, kube-proxy in iptables mode, pods on a CNI bridge), CoreDNS for
Service names and a local-volume provisioner for PersistentVolumeClaims (:mod:`.volumes`).

    with DevCluster(images=[Path(".envtest/image/kms-operator.tar")]) as cluster:
        cluster.kubectl("get", "nodes")

Every process is started by this object and stopped by its pid; the pods' processes are found
in the kubelet's ``kubepods`` cgroups and containerd's shims by this cluster's socket. A stop
(also after a crash: the next start finds the state file in ``/run/kms-devcluster``, see
:mod:`.state`) leaves no mount, cgroup, bridge, network namespace or iptables chain behind. One
dev cluster at a time per machine (a lock file says who holds it). Needs root, Linux, and the
binaries of ``hack/controlplane/ensure.sh`` and ``hack/node/ensure.sh``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Self

from kms_operator.devcluster import config, host, state
from kms_operator.devcluster.assets import find_node_assets
from kms_operator.devcluster.controlplane import LocalControlPlane
from kms_operator.devcluster.node import Node, make_directories
from kms_operator.devcluster.processes import Check, Harness, ProcessGroup, wait_until
from kms_operator.devcluster.rest import ApiError, Rest
from kms_operator.devcluster.volumes import STORAGE_CLASS, VolumeProvisioner

__all__ = ["STORAGE_CLASS", "DevCluster", "DevClusterError"]


class DevClusterError(RuntimeError):
    """The dev cluster cannot be started, or a part of it failed."""


class DevCluster(Harness):
    """Control plane, controller-manager, scheduler, one node, CoreDNS and volumes.

    Attributes once started: ``kubeconfig`` (admin), ``server``, ``control_plane``
    (the :class:`LocalControlPlane`), ``layout`` (names, addresses, paths), ``node_name``,
    ``timings`` (seconds per phase of the start).
    """

    name = "the dev cluster"
    error = DevClusterError

    def __init__(
        self,
        *,
        images: Sequence[Path] = (),
        work_dir: Path | None = None,
        keep_work_dir: bool = False,
        start_timeout: float = 300.0,
        stop_timeout: float = 20.0,
        node_assets: Path | None = None,
        assets: Path | None = None,
    ) -> None:
        self.image_archives = [Path(p) for p in images]
        self._work_dir_arg = work_dir
        self.keep_work_dir = keep_work_dir
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._node_assets_arg = node_assets
        self._assets_arg = assets
        self._procs: ProcessGroup | None = None
        self._cp: LocalControlPlane | None = None
        self._node: Node | None = None
        self._layout: config.NodeLayout | None = None
        self._lock_handle: IO[str] | None = None
        self._rest: Rest | None = None
        self._volumes: VolumeProvisioner | None = None
        self._owns_work_dir = False
        self.timings: dict[str, float] = {}
        self._sysctls: dict[str, str] = {}

    # -- properties ---------------------------------------------------------------------------

    @property
    def control_plane(self) -> LocalControlPlane:
        return self._part(self._cp)

    @property
    def layout(self) -> config.NodeLayout:
        return self._part(self._layout)

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    @property
    def server(self) -> str:
        return self.control_plane.server

    @property
    def node_name(self) -> str:
        return self.layout.node_name

    @property
    def rest(self) -> Rest:
        return self._part(self._rest)

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return self.control_plane.kubectl(*args, check=check, input=input, timeout=timeout)

    def running(self) -> list[str]:
        """Names of the processes that have exited (empty while all run)."""
        dead = self._procs.dead() if self._procs is not None else []
        if self._cp is not None and not self._cp.running:
            dead.append("control plane")
        if self._volumes is not None and self._volumes.error:
            dead.append(f"volume provisioner ({self._volumes.error})")
        return dead

    def logs_report(self, lines: int = 30) -> str:
        parts = [self._procs.logs_report(lines)] if self._procs is not None else []
        if self._cp is not None:
            parts.append(self._cp.logs_report(lines))
        return "\n".join(parts)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        if os.geteuid() != 0:
            raise DevClusterError("a dev cluster needs root (containerd, kubelet, iptables)")
        for archive in self.image_archives:
            if not archive.is_file():
                raise DevClusterError(f"image archive {archive} does not exist (make image)")
        node_bin = (self._node_assets_arg or find_node_assets()).resolve()
        self._take_lock()
        atexit.register(self.stop)
        try:
            self._start(node_bin)
        except BaseException:
            self.stop()
            raise
        return self

    def _take_lock(self) -> None:
        state.RUN_DIR.mkdir(parents=True, exist_ok=True)
        handle = (state.RUN_DIR / "lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise DevClusterError(
                f"another dev cluster runs on this machine (pid {holder}); stop it first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_handle = handle
        state.cleanup_stale()

    def _wait(self, what: str, check: Check, deadline: float) -> None:
        wait_until(
            what,
            check,
            deadline,
            error=DevClusterError,
            report=self.logs_report,
            expected=(OSError, ApiError, ValueError),
        )

    def _start(self, node_bin: Path) -> None:
        t0 = time.monotonic()
        deadline = t0 + self.start_timeout
        if self._work_dir_arg is not None:
            work = self._work_dir_arg.resolve()
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(tempfile.mkdtemp(prefix="kms-devcluster-"))
            self._owns_work_dir = True
        layout = self._layout = config.NodeLayout(work_dir=work)
        make_directories(layout)
        state.write(
            {
                "pid": os.getpid(),
                "work_dir": str(work),
                "bridge": layout.bridge,
                "containerd_socket": str(layout.containerd_socket),
            }
        )
        procs = self._procs = ProcessGroup(
            layout.path("logs"),
            DevClusterError,
            on_start=lambda pids: state.write_field("pids", pids),
        )

        # Network first: the API server advertises the bridge's address to the pods.
        gateway = ipaddress.IPv4Interface(f"{layout.node_ip}/{layout.pod_cidr.split('/')[1]}")
        host.create_bridge(layout.bridge, gateway, layout.service_cidr)
        host.install_guard(layout.pod_cidr, layout.bridge)
        self._sysctls = host.set_sysctls()
        state.write_field("sysctls", self._sysctls)

        phase = time.monotonic()
        pki = work / "controlplane" / "pki"
        cp = self._cp = LocalControlPlane(
            self._assets_arg,
            work_dir=work / "controlplane",
            keep_work_dir=True,
            start_timeout=max(30.0, deadline - time.monotonic()),
            extra_apiserver_args=[
                # Pods reach the API server through the `kubernetes` Service: its endpoint is
                # the bridge's address, so the server listens beyond loopback.
                "--bind-address=0.0.0.0",
                f"--advertise-address={layout.node_ip}",
                "--endpoint-reconciler-type=lease",
                f"--kubelet-client-certificate={pki / 'admin.crt'}",
                f"--kubelet-client-key={pki / 'admin.key'}",
                "--kubelet-preferred-address-types=InternalIP",
            ],
        )
        cp.start()
        rest = self._rest = Rest(cp.server, cp.ca_file, cp.client_cert_file, cp.client_key_file)
        phase = self._timed("control plane", phase)

        node = self._node = Node(node_bin, layout, cp, rest, procs)
        self._wait("containerd", node.start_containerd(), deadline)
        phase = self._timed("containerd", phase)
        node.import_images(self.image_archives)
        phase = self._timed("images", phase)
        node.write_cni_config()

        node.start_controllers()
        self._wait("node", node.start_kubelet(), deadline)
        phase = self._timed("kubelet (node Ready)", phase)
        self._wait("kube-proxy", node.start_kube_proxy(), deadline)
        self._wait("coredns", node.start_coredns(), deadline)
        self._volumes = VolumeProvisioner(rest, layout)
        self._volumes.start()
        self._wait("default ServiceAccount", node.default_service_account, deadline)
        self._timed("proxy, DNS, volumes", phase)
        self._timed("total", t0)

    def _timed(self, name: str, started: float) -> float:
        """Record the seconds since ``started`` as phase ``name``; the next phase starts now."""
        now = time.monotonic()
        self.timings[name] = round(now - started, 1)
        return now

    # -- stop ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything started, by pid, and undo every host change; idempotent."""
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        problems: list[str] = []
        if self._volumes is not None:
            self._volumes.stop()
            self._volumes = None
        if self._node is not None:
            problems += self._node.stop(self.stop_timeout)
            self._node = None
        if self._procs is not None:
            self._procs.stop_all(self.stop_timeout)
            self._procs = None
        if self._cp is not None:
            self._cp.stop()
            self._cp = None
        layout = self._layout
        if layout is not None:
            problems += state.teardown(layout.work_dir, layout.bridge, layout.containerd_socket)
            host.restore_sysctls(self._sysctls)
            self._sysctls = {}
            if self._owns_work_dir and not self.keep_work_dir:
                shutil.rmtree(layout.work_dir, ignore_errors=True)
        self._layout = None
        self._rest = None
        state.clear()
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None
        if problems:
            raise DevClusterError("the dev cluster did not stop cleanly: " + "; ".join(problems))

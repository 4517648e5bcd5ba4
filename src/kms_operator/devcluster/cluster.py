"""A real one-node Kubernetes cluster on this machine, for the e2e tier and ``make cluster``.

The control plane is :class:`kms_operator.controlplane.LocalControlPlane` (etcd and
kube-apiserver); next to it run kube-controller-manager and kube-scheduler, one node
(containerd 2.x with Debian's runc, the kubelet, kube-proxy in iptables mode, pods on a CNI
bridge), CoreDNS for Service names and a local-volume provisioner for PersistentVolumeClaims.

    with DevCluster(images=[Path(".envtest/image/kms-operator.tar")]) as cluster:
        cluster.kubectl("get", "nodes")

Every process is started by this object and stopped by its pid; the pods' processes are found
in the kubelet's ``kubepods`` cgroups and containerd's shims by this cluster's socket. A stop
(also after a crash: the next start finds the state file in ``/run/kms-devcluster``) leaves no
mount, cgroup, bridge, network namespace or iptables chain behind. One dev cluster at a time
per machine (a lock file says who holds it). Needs root, Linux, and the binaries of
``hack/controlplane/ensure.sh`` and ``hack/node/ensure.sh``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from kms_operator.controlplane import (
    LocalControlPlane,
    _free_port,
    _Process,
    _tail,
)
from kms_operator.devcluster import config, host, images
from kms_operator.devcluster.assets import find_node_assets, runc
from kms_operator.devcluster.rest import ApiError, Rest

__all__ = ["STORAGE_CLASS", "DevCluster", "DevClusterError", "cleanup_stale", "teardown"]

RUN_DIR = Path("/run/kms-devcluster")
STORAGE_CLASS = "kms-local"
PROVISIONER = "kms.cmk.dev/devcluster-local"
_CGROUP = "kubepods"


class DevClusterError(RuntimeError):
    """The dev cluster cannot be started, or a part of it failed."""


def _wait(
    what: str, check: Callable[[], str | None], deadline: float, logs: Callable[[], str]
) -> None:
    """Poll ``check`` (None when done, else why not) until done or the deadline passes."""
    last = "not checked yet"
    while True:
        try:
            problem = check()
        except (OSError, ApiError, ValueError) as exc:
            problem = str(exc)
        if problem is None:
            return
        last = problem
        if time.monotonic() > deadline:
            raise DevClusterError(f"{what}: not ready in time; last: {last}\n{logs()}")
        time.sleep(0.5)


class DevCluster:
    """Control plane, controller-manager, scheduler, one node, CoreDNS and volumes.

    Attributes once started: ``kubeconfig`` (admin), ``server``, ``control_plane``
    (the :class:`LocalControlPlane`), ``layout`` (names, addresses, paths), ``node_name``.
    """

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
        self._procs: dict[str, _Process] = {}
        self._cp: LocalControlPlane | None = None
        self._layout: config.NodeLayout | None = None
        self._lock_handle: IO[str] | None = None
        self._rest: Rest | None = None
        self._provisioner: threading.Thread | None = None
        self._stopping = threading.Event()
        self._provisioner_error: str | None = None
        self._owns_work_dir = False
        self.timings: dict[str, float] = {}
        self._sysctls: dict[str, str] = {}

    # -- properties ---------------------------------------------------------------------------

    @property
    def control_plane(self) -> LocalControlPlane:
        if self._cp is None:
            raise DevClusterError("the dev cluster is not started")
        return self._cp

    @property
    def layout(self) -> config.NodeLayout:
        if self._layout is None:
            raise DevClusterError("the dev cluster is not started")
        return self._layout

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
        if self._rest is None:
            raise DevClusterError("the dev cluster is not started")
        return self._rest

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return self.control_plane.kubectl(*args, check=check, input=input, timeout=timeout)

    def running(self) -> list[str]:
        """Names of the processes that have exited (empty while all run)."""
        dead = [name for name, proc in self._procs.items() if not proc.alive()]
        if self._cp is not None and not self._cp.running:
            dead.append("control plane")
        if self._provisioner_error:
            dead.append(f"volume provisioner ({self._provisioner_error})")
        return dead

    def logs_report(self, lines: int = 30) -> str:
        parts = [
            f"--- last lines of {proc.log_file} ---\n{_tail(proc.log_file, lines)}"
            for proc in self._procs.values()
        ]
        if self._cp is not None:
            parts.append(self._cp._logs_report())
        return "\n".join(parts)

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        if os.geteuid() != 0:
            raise DevClusterError("a dev cluster needs root (containerd, kubelet, iptables)")
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
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        handle = (RUN_DIR / "lock").open("a+")
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
        cleanup_stale()

    def _timed(self, name: str, started: float) -> None:
        self.timings[name] = round(time.monotonic() - started, 1)

    def _start(self, node_bin: Path) -> None:
        t0 = time.monotonic()
        deadline = t0 + self.start_timeout
        if self._work_dir_arg is not None:
            work = self._work_dir_arg.resolve()
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(tempfile.mkdtemp(prefix="kms-devcluster-"))
            self._owns_work_dir = True
        layout = config.NodeLayout(work_dir=work)
        self._layout = layout
        for sub in (
            "containerd",
            "cni/net.d",
            "cni/ipam",
            "kubelet",
            "pod-logs",
            "volumes",
            "kubelet-plugins",
            "logs",
        ):
            layout.path(sub).mkdir(parents=True, exist_ok=True)
        _write_state(
            {
                "pid": os.getpid(),
                "work_dir": str(work),
                "bridge": layout.bridge,
                "containerd_socket": str(layout.containerd_socket),
            }
        )

        # Network first: the API server advertises the bridge's address to the pods.
        gateway = ipaddress.IPv4Interface(f"{layout.node_ip}/{layout.pod_cidr.split('/')[1]}")
        host.create_bridge(layout.bridge, gateway, layout.service_cidr)
        host.install_guard(layout.pod_cidr, layout.bridge)
        self._sysctls = host.set_sysctls()
        _write_state_field("sysctls", self._sysctls)

        s = time.monotonic()
        pki = work / "controlplane" / "pki"
        self._cp = LocalControlPlane(
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
        self._cp.start()
        cp = self._cp
        self._rest = Rest(cp.server, cp.ca_file, cp.client_cert_file, cp.client_key_file)
        self._timed("control plane", s)

        s = time.monotonic()
        self._start_containerd(node_bin, layout, deadline)
        self._timed("containerd", s)
        s = time.monotonic()
        pause_archive = images.write_pause_archive(node_bin / "pause", work / "pause.tar")
        images.import_archive(
            node_bin / "ctr", layout.containerd_socket, pause_archive, pinned=True
        )
        for archive in self.image_archives:
            if not archive.is_file():
                raise DevClusterError(f"image archive {archive} does not exist (make image)")
            images.import_archive(node_bin / "ctr", layout.containerd_socket, archive)
        self._timed("images", s)
        (layout.cni_conf_dir / "10-kms-devcluster.conflist").write_text(
            json.dumps(config.cni_conflist(layout), indent=2)
        )

        s = time.monotonic()
        self._start_controllers(node_bin, cp)
        self._start_kubelet(node_bin, layout, cp, deadline)
        self._timed("kubelet (node Ready)", s)
        s = time.monotonic()
        self._start_kube_proxy(node_bin, layout, cp, deadline)
        self._start_coredns(node_bin, layout, cp, deadline)
        self._start_provisioner(layout)
        self._wait_default_service_account(deadline)
        self._timed("proxy, DNS, volumes", s)
        self._timed("total", t0)

    # -- the parts ----------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> _Process:
        proc = _Process(name, argv, self.layout.path("logs", f"{name}.log"))
        self._procs[name] = proc
        _write_state_pids({n: p.popen.pid for n, p in self._procs.items()})
        return proc

    def _alive_or_fail(self, name: str) -> str | None:
        proc = self._procs[name]
        if not proc.alive():
            raise DevClusterError(
                f"{name} exited with code {proc.popen.returncode}\n"
                f"--- {proc.log_file} ---\n{_tail(proc.log_file, 40)}"
            )
        return None

    def _start_containerd(self, node_bin: Path, layout: config.NodeLayout, deadline: float) -> None:
        conf = layout.path("containerd", "config.toml")
        conf.write_text(
            config.containerd_toml(layout, runc(), node_bin / "cni", images.PAUSE_IMAGE)
        )
        # containerd finds containerd-shim-runc-v2 on PATH (env execs it: same pid).
        path = f"{node_bin}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        self._spawn(
            "containerd",
            ["/usr/bin/env", f"PATH={path}", str(node_bin / "containerd"), "--config", str(conf)],
        )
        ctr = node_bin / "ctr"

        def ready() -> str | None:
            self._alive_or_fail("containerd")
            proc = host.run(
                str(ctr),
                "--address",
                str(layout.containerd_socket),
                "version",
                check=False,
                timeout=10,
            )
            return None if proc.returncode == 0 else proc.stderr.strip()[-300:]

        _wait("containerd", ready, deadline, self.logs_report)

    def _start_controllers(self, node_bin: Path, cp: LocalControlPlane) -> None:
        pki = cp.work_dir / "pki"
        self._spawn(
            "kube-controller-manager",
            [
                str(node_bin / "kube-controller-manager"),
                f"--kubeconfig={cp.kubeconfig}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={cp.ca_file}",
                "--use-service-account-credentials=false",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--cluster-name=kms-local",
                f"--service-cluster-ip-range={self.layout.service_cidr}",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(node_bin / "kube-scheduler"),
                f"--kubeconfig={cp.kubeconfig}",
                f"--authentication-kubeconfig={cp.kubeconfig}",
                f"--authorization-kubeconfig={cp.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={_free_port()}",
                "--v=1",
            ],
        )

    def _start_kubelet(
        self, node_bin: Path, layout: config.NodeLayout, cp: LocalControlPlane, deadline: float
    ) -> None:
        resolv = layout.path("kubelet", "resolv.conf")
        resolv.write_text("")
        conf = layout.path("kubelet", "config.yaml")
        conf.write_text(
            config.kubelet_yaml(
                layout,
                ca_file=cp.ca_file,
                port=_free_port(),
                healthz_port=_free_port(),
                resolv_conf=resolv,
            )
        )
        self._spawn(
            "kubelet",
            [
                str(node_bin / "kubelet"),
                f"--config={conf}",
                f"--kubeconfig={cp.kubeconfig}",
                f"--root-dir={layout.path('kubelet', 'root')}",
                f"--cert-dir={layout.path('kubelet', 'pki')}",
                f"--hostname-override={layout.node_name}",
                f"--node-ip={layout.node_ip}",
                "--v=1",
            ],
        )

        def node_ready() -> str | None:
            for name in ("kubelet", "containerd", "kube-controller-manager", "kube-scheduler"):
                self._alive_or_fail(name)
            try:
                node = self.rest.get(f"/api/v1/nodes/{layout.node_name}")
            except ApiError as exc:
                return f"node not registered: {exc}"
            for cond in node.get("status", {}).get("conditions", []):
                if cond.get("type") == "Ready":
                    return None if cond.get("status") == "True" else cond.get("message", "")
            return "no Ready condition yet"

        _wait("node", node_ready, deadline, self.logs_report)

    def _start_kube_proxy(
        self, node_bin: Path, layout: config.NodeLayout, cp: LocalControlPlane, deadline: float
    ) -> None:
        healthz = _free_port()
        conf = layout.path("kube-proxy.yaml")
        conf.write_text(
            config.kube_proxy_yaml(
                layout, kubeconfig=cp.kubeconfig, healthz_port=healthz, metrics_port=_free_port()
            )
        )
        self._spawn("kube-proxy", [str(node_bin / "kube-proxy"), f"--config={conf}", "--v=1"])

        def synced() -> str | None:
            self._alive_or_fail("kube-proxy")
            return _http_ok(f"http://127.0.0.1:{healthz}/healthz")

        _wait("kube-proxy", synced, deadline, self.logs_report)

    def _start_coredns(
        self, node_bin: Path, layout: config.NodeLayout, cp: LocalControlPlane, deadline: float
    ) -> None:
        ready = _free_port()
        corefile = layout.path("Corefile")
        corefile.write_text(
            config.corefile(
                layout, kubeconfig=cp.kubeconfig, health_port=_free_port(), ready_port=ready
            )
        )
        self._spawn("coredns", [str(node_bin / "coredns"), "-conf", str(corefile)])

        def serving() -> str | None:
            self._alive_or_fail("coredns")
            return _http_ok(f"http://127.0.0.1:{ready}/ready")

        _wait("coredns", serving, deadline, self.logs_report)

    def _wait_default_service_account(self, deadline: float) -> None:
        def present() -> str | None:
            self._alive_or_fail("kube-controller-manager")
            self.rest.get("/api/v1/namespaces/default/serviceaccounts/default")
            return None

        _wait("default ServiceAccount", present, deadline, self.logs_report)

    # -- volumes ------------------------------------------------------------------------------

    def _start_provisioner(self, layout: config.NodeLayout) -> None:
        self.rest.create(
            "/apis/storage.k8s.io/v1/storageclasses",
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {
                    "name": STORAGE_CLASS,
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                "provisioner": PROVISIONER,
                "reclaimPolicy": "Retain",
                "volumeBindingMode": "Immediate",
            },
        )
        self._stopping.clear()
        self._provisioner = threading.Thread(
            target=self._provision_loop, name="kms-devcluster-volumes", daemon=True
        )
        self._provisioner.start()

    def _provision_loop(self) -> None:
        failures = 0
        while not self._stopping.wait(1.0):
            try:
                self._provision_once()
                failures = 0
            except (OSError, ApiError, ValueError) as exc:
                failures += 1
                if failures >= 30:
                    self._provisioner_error = str(exc)
                    return

    def _provision_once(self) -> None:
        layout = self.layout
        claims = self.rest.get("/api/v1/persistentvolumeclaims").get("items", [])
        for claim in claims:
            meta, spec = claim["metadata"], claim.get("spec", {})
            if claim.get("status", {}).get("phase") != "Pending" or spec.get("volumeName"):
                continue
            if spec.get("storageClassName") != STORAGE_CLASS:
                continue
            uid = meta["uid"]
            directory = layout.path("volumes", f"{meta['namespace']}-{meta['name']}-{uid[:8]}")
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            self.rest.create(
                "/api/v1/persistentvolumes",
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {
                        "name": f"{STORAGE_CLASS}-{uid}",
                        "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
                    },
                    "spec": {
                        "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                        "accessModes": spec.get("accessModes", ["ReadWriteOnce"]),
                        "persistentVolumeReclaimPolicy": "Retain",
                        "storageClassName": STORAGE_CLASS,
                        "volumeMode": "Filesystem",
                        "claimRef": {
                            "kind": "PersistentVolumeClaim",
                            "apiVersion": "v1",
                            "namespace": meta["namespace"],
                            "name": meta["name"],
                            "uid": uid,
                        },
                        "local": {"path": str(directory)},
                        "nodeAffinity": {
                            "required": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {
                                                "key": "kubernetes.io/hostname",
                                                "operator": "In",
                                                "values": [layout.node_name],
                                            },
                                        ]
                                    }
                                ]
                            }
                        },
                    },
                },
            )

    # -- stop ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything started, by pid, and undo every host change; idempotent."""
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        self._stopping.set()
        if self._provisioner is not None:
            self._provisioner.join(timeout=5)
            self._provisioner = None
        problems: list[str] = []
        for name in (
            "coredns",
            "kube-proxy",
            "kube-scheduler",
            "kube-controller-manager",
            "kubelet",
        ):
            proc = self._procs.pop(name, None)
            if proc is not None:
                proc.stop(self.stop_timeout)
        containerd = self._procs.pop("containerd", None)
        layout = self._layout
        try:
            host.kill_cgroup_processes(_CGROUP)
        except host.HostError as exc:
            problems.append(str(exc))
        if containerd is not None:
            containerd.stop(self.stop_timeout)
        for name, proc in list(self._procs.items()):
            proc.stop(self.stop_timeout)
            del self._procs[name]
        if self._cp is not None:
            self._cp.stop()
            self._cp = None
        if layout is not None:
            problems += teardown(layout.work_dir, layout.bridge, layout.containerd_socket)
            host.restore_sysctls(self._sysctls)
            self._sysctls = {}
            if self._owns_work_dir and not self.keep_work_dir:
                shutil.rmtree(layout.work_dir, ignore_errors=True)
        self._layout = None
        self._rest = None
        _clear_state()
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None
        if problems:
            raise DevClusterError("the dev cluster did not stop cleanly: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------
# Teardown, also of a cluster whose harness died
# --------------------------------------------------------------------------------------------


def teardown(work_dir: Path, bridge: str, containerd_socket: Path) -> list[str]:
    """Undo a node's host changes: pods' processes, shims, mounts, cgroups, chains, bridge."""
    problems: list[str] = []
    try:
        host.kill_cgroup_processes(_CGROUP)
    except host.HostError as exc:
        problems.append(str(exc))
    host.kill_processes_mentioning([str(containerd_socket)])
    left = host.unmount_under(work_dir)
    if left:
        problems.append(f"still mounted: {', '.join(map(str, left))}")
    cgroups = host.remove_cgroups(_CGROUP)
    if cgroups:
        problems.append(f"cgroups left: {', '.join(map(str, cgroups[:5]))}")
    host.cleanup_iptables()
    host.delete_bridge(bridge)
    return problems


def cleanup_stale() -> None:
    """Clean up after a dev cluster whose harness died without stopping it."""
    state = _read_state()
    if not state:
        return
    work_dir = Path(state.get("work_dir", ""))
    for pid in state.get("pids", {}).values():
        # Only a process still running from that work dir's binaries and files.
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if str(work_dir) in cmdline:
                os.kill(int(pid), 9)
    if str(work_dir) not in ("", "."):
        teardown(
            work_dir,
            state.get("bridge", "kmsbr0"),
            Path(state.get("containerd_socket", work_dir / "containerd" / "x.sock")),
        )
        if work_dir.name.startswith("kms-devcluster-"):
            shutil.rmtree(work_dir, ignore_errors=True)
    sysctls = state.get("sysctls")
    if isinstance(sysctls, dict):
        host.restore_sysctls({str(k): str(v) for k, v in sysctls.items()})
    _clear_state()


def _state_file() -> Path:
    return RUN_DIR / "state.json"


def _read_state() -> dict[str, Any]:
    try:
        data = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(state: dict[str, Any]) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    tmp = _state_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(_state_file())


def _write_state_pids(pids: dict[str, int]) -> None:
    _write_state_field("pids", pids)


def _write_state_field(name: str, value: Any) -> None:
    state = _read_state()
    state[name] = value
    _write_state(state)


def _clear_state() -> None:
    with contextlib.suppress(FileNotFoundError):
        _state_file().unlink()


def _http_ok(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:  # noqa: S310 (loopback)
            return None if answer.status == 200 else f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except OSError as exc:
        return str(exc)

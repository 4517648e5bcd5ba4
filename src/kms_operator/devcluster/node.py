"""The node's processes: containerd, the kubelet, kube-proxy and CoreDNS, and the two
controllers run from the node's binaries (kube-controller-manager, kube-scheduler).

Each ``start_*`` writes its configuration (:mod:`.config`), starts the binary in the cluster's
:class:`~.processes.ProcessGroup` and returns the check that says when it is ready; the cluster
waits on it under its one deadline. :meth:`Node.stop` stops them in the order that leaves no
pod behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from kms_operator.devcluster import config, host, images, state
from kms_operator.devcluster.assets import runc
from kms_operator.devcluster.controlplane import LocalControlPlane
from kms_operator.devcluster.processes import Check, ProcessGroup, free_port, http_get
from kms_operator.devcluster.rest import ApiError, Rest

__all__ = ["Node", "make_directories"]

_DIRECTORIES = (
    "containerd",
    "cni/net.d",
    "cni/ipam",
    "kubelet",
    "pod-logs",
    "volumes",
    "kubelet-plugins",
    "logs",
)


def make_directories(layout: config.NodeLayout) -> None:
    for sub in _DIRECTORIES:
        layout.path(sub).mkdir(parents=True, exist_ok=True)


class Node:
    """One node of ``binaries`` (``hack/node/ensure.sh``) on ``layout``, served by ``cp``."""

    def __init__(
        self,
        binaries: Path,
        layout: config.NodeLayout,
        cp: LocalControlPlane,
        rest: Rest,
        processes: ProcessGroup,
    ) -> None:
        self.binaries = binaries
        self.layout = layout
        self._cp = cp
        self._rest = rest
        self._processes = processes

    def _serving(self, name: str, argv: list[str], health_url: str) -> Check:
        """Start ``name``; ready when it runs and ``health_url`` answers 200."""
        self._processes.start(name, argv)

        def check() -> str | None:
            self._processes.require_alive(name)
            status, body = http_get(health_url, timeout=3)
            return None if status == 200 else f"HTTP {status}: {body.decode(errors='replace')}"

        return check

    def start_containerd(self) -> Check:
        conf = self.layout.path("containerd", "config.toml")
        conf.write_text(
            config.containerd_toml(self.layout, runc(), self.binaries / "cni", images.PAUSE_IMAGE)
        )
        # containerd finds containerd-shim-runc-v2 on PATH (env execs it: same pid).
        path = f"{self.binaries}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        containerd = str(self.binaries / "containerd")
        self._processes.start(
            "containerd", ["/usr/bin/env", f"PATH={path}", containerd, "--config", str(conf)]
        )
        ctr, socket = str(self.binaries / "ctr"), str(self.layout.containerd_socket)

        def ready() -> str | None:
            self._processes.require_alive("containerd")
            proc = host.run(ctr, "--address", socket, "version", check=False, timeout=10)
            return None if proc.returncode == 0 else proc.stderr.strip()[-300:]

        return ready

    def import_images(self, archives: Sequence[Path]) -> None:
        """The pause image (made here, pinned) and ``archives`` into containerd."""
        ctr, socket = self.binaries / "ctr", self.layout.containerd_socket
        pause = images.write_pause_archive(self.binaries / "pause", self.layout.path("pause.tar"))
        images.import_archive(ctr, socket, pause, pinned=True)
        for archive in archives:
            images.import_archive(ctr, socket, archive)

    def write_cni_config(self) -> None:
        """The pods' network (read by containerd when it makes the first sandbox)."""
        (self.layout.cni_conf_dir / "10-kms-devcluster.conflist").write_text(
            json.dumps(config.cni_conflist(self.layout), indent=2)
        )

    def start_controllers(self) -> None:
        """kube-controller-manager and kube-scheduler (the kubelet's check waits for them)."""
        cp = self._cp
        self._processes.start(
            "kube-controller-manager",
            [
                str(self.binaries / "kube-controller-manager"),
                f"--kubeconfig={cp.kubeconfig}",
                f"--service-account-private-key-file={cp.service_account_key_file}",
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
        self._processes.start(
            "kube-scheduler",
            [
                str(self.binaries / "kube-scheduler"),
                f"--kubeconfig={cp.kubeconfig}",
                f"--authentication-kubeconfig={cp.kubeconfig}",
                f"--authorization-kubeconfig={cp.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--v=1",
            ],
        )

    def start_kubelet(self) -> Check:
        """The kubelet; ready when the Node object says Ready."""
        layout, cp = self.layout, self._cp
        resolv = layout.path("kubelet", "resolv.conf")
        resolv.write_text("")
        conf = layout.path("kubelet", "config.yaml")
        conf.write_text(
            config.kubelet_yaml(
                layout,
                ca_file=cp.ca_file,
                port=free_port(),
                healthz_port=free_port(),
                resolv_conf=resolv,
            )
        )
        self._processes.start(
            "kubelet",
            [
                str(self.binaries / "kubelet"),
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
            self._processes.require_alive(
                "kubelet", "containerd", "kube-controller-manager", "kube-scheduler"
            )
            try:
                node = self._rest.get(f"/api/v1/nodes/{layout.node_name}")
            except ApiError as exc:
                return f"node not registered: {exc}"
            for cond in node.get("status", {}).get("conditions", []):
                if cond.get("type") == "Ready":
                    return None if cond.get("status") == "True" else cond.get("message", "")
            return "no Ready condition yet"

        return node_ready

    def start_kube_proxy(self) -> Check:
        healthz = free_port()
        conf = self.layout.path("kube-proxy.yaml")
        conf.write_text(
            config.kube_proxy_yaml(
                self.layout,
                kubeconfig=self._cp.kubeconfig,
                healthz_port=healthz,
                metrics_port=free_port(),
            )
        )
        return self._serving(
            "kube-proxy",
            [str(self.binaries / "kube-proxy"), f"--config={conf}", "--v=1"],
            f"http://127.0.0.1:{healthz}/healthz",
        )

    def start_coredns(self) -> Check:
        ready = free_port()
        corefile = self.layout.path("Corefile")
        corefile.write_text(
            config.corefile(
                self.layout,
                kubeconfig=self._cp.kubeconfig,
                health_port=free_port(),
                ready_port=ready,
            )
        )
        return self._serving(
            "coredns",
            [str(self.binaries / "coredns"), "-conf", str(corefile)],
            f"http://127.0.0.1:{ready}/ready",
        )

    def default_service_account(self) -> str | None:
        """A check: the controller-manager has made the ``default`` ServiceAccount."""
        self._processes.require_alive("kube-controller-manager")
        self._rest.get("/api/v1/namespaces/default/serviceaccounts/default")
        return None

    def stop(self, timeout: float) -> list[str]:
        """Stop the node's processes, the pods' ones (by the kubelet's cgroups) before
        containerd; returns what could not be stopped."""
        problems: list[str] = []
        self._processes.stop(
            "coredns",
            "kube-proxy",
            "kube-scheduler",
            "kube-controller-manager",
            "kubelet",
            timeout=timeout,
        )
        try:
            host.kill_cgroup_processes(state.POD_CGROUP)
        except host.HostError as exc:
            problems.append(str(exc))
        self._processes.stop_all(timeout)
        return problems

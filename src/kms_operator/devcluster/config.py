"""Configuration files of the local node: containerd, CNI, kubelet, kube-proxy, CoreDNS.

The facts of this kind of machine that shaped them (see the README's ``make cluster``):

- cgroup v1 hierarchies (with a cgroup2 at /sys/fs/cgroup/unified): the kubelet needs
  ``failCgroupV1: false`` and ``cgroupDriver: cgroupfs``;
- root lacks CAP_SYS_RESOURCE, so no process may lower its ``oom_score_adj``: containerd's
  ``restrict_oom_score_adj = true`` (else every sandbox fails with ``nsexec: failed to update
  /proc/self/oom_score_adj: Permission denied``), and the kubelet's and kube-proxy's own
  ``oomScoreAdj`` stay 0;
- no swap; no registry: the sandbox image is local (:mod:`.images`), never pulled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["NodeLayout", "containerd_toml", "corefile", "kube_proxy_yaml", "kubelet_yaml"]


def _q(value: str | Path) -> str:
    """A TOML basic string (JSON's escapes are TOML's for these values)."""
    return json.dumps(str(value))


@dataclass(frozen=True)
class NodeLayout:
    """Names, addresses and paths of one local node."""

    work_dir: Path
    node_name: str = "kms-node"
    bridge: str = "kmsbr0"
    pod_cidr: str = "10.244.0.0/24"
    node_ip: str = "10.244.0.1"  # the bridge's address: pods reach the host (API server, DNS)
    service_cidr: str = "10.0.0.0/24"  # as the local control plane's --service-cluster-ip-range
    cluster_domain: str = "cluster.local"

    def path(self, *parts: str) -> Path:
        return self.work_dir.joinpath(*parts)

    @property
    def containerd_socket(self) -> Path:
        return self.path("containerd", "containerd.sock")

    @property
    def cni_conf_dir(self) -> Path:
        return self.path("cni", "net.d")


def containerd_toml(layout: NodeLayout, runc: Path, cni_bin: Path, sandbox_image: str) -> str:
    runtime = "plugins.'io.containerd.cri.v1.runtime'"
    return f"""\
# containerd 2.x, config version 3: written by kms_operator.devcluster for one local node.
version = 3
root = {_q(layout.path("containerd", "root"))}
state = {_q(layout.path("containerd", "state"))}
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = {_q(layout.containerd_socket)}

[ttrpc]
  address = {_q(layout.path("containerd", "containerd.sock.ttrpc"))}

[debug]
  level = "warn"

[plugins.'io.containerd.internal.v1.opt']
  path = {_q(layout.path("containerd", "opt"))}

[{runtime}]
  # Root here has no CAP_SYS_RESOURCE: never ask runc to lower a sandbox's oom_score_adj.
  restrict_oom_score_adj = true
  disable_apparmor = true
  # Network namespaces are bind-mounted under the state directory, so a stop finds them all.
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true

[{runtime}.containerd]
  default_runtime_name = "runc"

[{runtime}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{runtime}.containerd.runtimes.runc.options]
  BinaryName = {_q(runc)}
  Root = {_q(layout.path("containerd", "runc"))}
  SystemdCgroup = false

[{runtime}.cni]
  bin_dirs = [{_q(cni_bin)}]
  conf_dir = {_q(layout.cni_conf_dir)}
  max_conf_num = 1

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = {_q(sandbox_image)}

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def cni_conflist(layout: NodeLayout) -> dict[str, Any]:
    """bridge + host-local (no masquerade: pods reach this machine only), portmap, loopback."""
    return {
        "cniVersion": "1.0.0",
        "name": "kms-devcluster",
        "plugins": [
            {
                "type": "bridge",
                "bridge": layout.bridge,
                "isGateway": True,
                "isDefaultGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": layout.pod_cidr, "gateway": layout.node_ip}]],
                    "dataDir": str(layout.path("cni", "ipam")),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_yaml(
    layout: NodeLayout, *, ca_file: Path, port: int, healthz_port: int, resolv_conf: Path
) -> str:
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": layout.node_ip,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        # cgroup v1 here: allowed explicitly, driven through cgroupfs (no systemd).
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "failSwapOn": True,
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "clusterDNS": [layout.node_ip],
        "clusterDomain": layout.cluster_domain,
        "resolvConf": str(resolv_conf),
        # Lowering an oom_score_adj needs CAP_SYS_RESOURCE, which root lacks here.
        "oomScoreAdj": 0,
        "podLogsDir": str(layout.path("pod-logs")),
        "volumePluginDir": str(layout.path("kubelet-plugins")),
        "staticPodPath": "",
        # The images were imported, not pulled: never collect them, never evict for disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "maxPods": 60,
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "shutdownGracePeriod": "0s",
        "shutdownGracePeriodCriticalPods": "0s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
    }
    return yaml.safe_dump(config, sort_keys=False)


def kube_proxy_yaml(
    layout: NodeLayout, *, kubeconfig: Path, healthz_port: int, metrics_port: int
) -> str:
    config: dict[str, Any] = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": layout.node_name,
        "bindAddress": layout.node_ip,
        "clusterCIDR": layout.pod_cidr,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "oomScoreAdj": 0,
        # Leave the host's conntrack sysctls alone (a shared machine).
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False, "syncPeriod": "5s"},
        "detectLocalMode": "ClusterCIDR",
        "nodePortAddresses": [f"{layout.node_ip}/32"],
    }
    return yaml.safe_dump(config, sort_keys=False)


def corefile(layout: NodeLayout, *, kubeconfig: Path, health_port: int, ready_port: int) -> str:
    """CoreDNS for the cluster domain only: no ``forward``, so no query ever leaves the host."""
    return f"""\
.:53 {{
    bind {layout.node_ip}
    errors
    health 127.0.0.1:{health_port}
    ready 127.0.0.1:{ready_port}
    kubernetes {layout.cluster_domain} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} kms-local
        pods insecure
        ttl 5
    }}
    cache 5
    loadbalance
}}
"""

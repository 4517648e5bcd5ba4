"""A local Kubernetes cluster with a real node, for the e2e tier and ``make cluster``.

:class:`DevCluster` runs the local control plane of :mod:`kms_operator.controlplane` with
kube-controller-manager, kube-scheduler, one node (containerd 2.x + runc, kubelet, kube-proxy,
a CNI bridge), CoreDNS and a local-volume provisioner. Development and test harness only: the
operator never imports it. Like the control plane, it imports neither Kopf nor the Kubernetes
client.
"""

from kms_operator.devcluster.cluster import STORAGE_CLASS, DevCluster, DevClusterError

__all__ = ["STORAGE_CLASS", "DevCluster", "DevClusterError"]

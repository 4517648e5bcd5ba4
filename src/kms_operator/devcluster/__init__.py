"""Local Kubernetes clusters on this machine, for the tests, ``make run`` and ``make cluster``.

Development and test harness only: the operator's code never imports it; the command line
does, for ``kms-operator run --cluster auto`` (a local control plane for the session when no
cluster is configured). It imports neither Kopf nor the Kubernetes client.

- :mod:`.controlplane`: ``LocalControlPlane``, etcd and kube-apiserver on loopback, with its
  credentials (:mod:`.credentials`) and an admin kubeconfig;
- :mod:`.cluster`: ``DevCluster``, that control plane with kube-controller-manager,
  kube-scheduler and one real node (:mod:`.node`: containerd 2.x + runc, kubelet, kube-proxy,
  a CNI bridge, CoreDNS), local volumes (:mod:`.volumes`) and the images loaded into it
  (:mod:`.images`);
- beneath them: :mod:`.processes` (start, wait for, stop by pid), :mod:`.assets` (where the
  binaries are), :mod:`.config` (the node's configuration files), :mod:`.host` and
  :mod:`.state` (what the node changes on the host and how it is undone), :mod:`.rest`.
"""

"""A front end: the Kubernetes KMS v2 plugin (DESIGN.md section 6b).

``kms-operator kms-plugin serve`` answers kube-apiserver's ``v2.KeyManagementService`` calls on
a unix socket of a control-plane node, from its own store file and root key on that node, so it
never needs the cluster it protects:

* :mod:`.protocol` the API (generated from ``v2/api.proto`` by ``hack/proto/generate.sh``)
  behind typed names, and a client;
* :mod:`.nodekeys` where the plugin's keys live, the key_id format, the ``keys`` verbs;
* :mod:`.health` what Status answers; :mod:`.servicer` the three calls over the domain;
* :mod:`.server` the gRPC server on the socket.
"""

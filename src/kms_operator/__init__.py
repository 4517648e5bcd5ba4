"""kms-operator: a Key Management Service that lives inside a Kubernetes cluster."""

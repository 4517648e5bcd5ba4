#!/usr/bin/env bash
# Render the plain-YAML install (manifests/install/kms-operator.yaml) from the Helm chart with
# its default values, for `kubectl apply` without Helm:
#
#     hack/render-install.sh [OUTPUT]      # default: manifests/install/kms-operator.yaml
#
# Differences from `helm install` with default values, both deliberate:
# - rootKey.existingSecret=kms-operator-root-key: a rendered file cannot create the root key
#   once and keep it (no `lookup`), and a key committed to a file would be everyone's key. The
#   user creates the Secret first (manifests/install/README.md).
# - A Namespace object (kms-system, Pod Security "restricted") comes first.
# tests/unit/test_chart.py fails when the committed file differs from this script's output.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
output="${1:-${repo_root}/manifests/install/kms-operator.yaml}"
release=kms-operator
namespace=kms-system

helm_bin=""
for candidate in "${KUBEBUILDER_ASSETS:-}/helm" "${repo_root}/.envtest/bin/helm"; do
  if [[ -x "${candidate}" ]]; then helm_bin="${candidate}"; break; fi
done
if [[ -z "${helm_bin}" ]]; then
  echo "helm not found in \$KUBEBUILDER_ASSETS or .envtest/bin: run hack/controlplane/ensure.sh" >&2
  exit 1
fi

rendered="$("${helm_bin}" template "${release}" "${repo_root}/charts/kms-operator" \
  --namespace "${namespace}" --include-crds \
  --set rootKey.existingSecret=kms-operator-root-key)"

mkdir -p "$(dirname "${output}")"
{
  cat <<HEADER
# kms-operator: plain-YAML install, rendered from charts/kms-operator with default values by
# hack/render-install.sh. DO NOT EDIT: change the chart and run the script again.
#
# Before applying, create the root key Secret ONCE and back it up (losing it loses every key):
#
#   kubectl create namespace ${namespace}
#   head -c 32 /dev/urandom > root.key
#   kubectl -n ${namespace} create secret generic kms-operator-root-key --from-file=root.key
#
# Then: kubectl apply --server-side -f kms-operator.yaml
# Never "kubectl delete -f" this file: deleting the CRDs deletes every key object.
---
apiVersion: v1
kind: Namespace
metadata:
  name: ${namespace}
  labels:
    app.kubernetes.io/part-of: kms-operator
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
HEADER
  printf '%s\n' "${rendered}"
} > "${output}.tmp"
mv "${output}.tmp" "${output}"
echo "wrote ${output}" >&2

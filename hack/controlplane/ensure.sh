#!/usr/bin/env bash
# Ensure kube-apiserver, etcd, kubectl, helm and etcdctl binaries exist for the local
# control plane (envtest style) and print their directory as the LAST line of
# stdout:
#
#     export KUBEBUILDER_ASSETS="$(hack/controlplane/ensure.sh | tail -1)"
#
# - If KUBEBUILDER_ASSETS is set and holds executable kube-apiserver, etcd and
#   kubectl, it is used as is and printed. Only etcdctl (the tests that read etcd
#   need it) is built, into our own <repo>/.envtest/bin, when that directory lacks
#   it; the tests look for etcdctl in KUBEBUILDER_ASSETS, then in <repo>/.envtest/bin
#   (kms_operator.devcluster.assets.find_etcdctl).
# - Otherwise the tools are built from Go modules (pinned in versions.env) into
#   <repo>/.envtest/bin through small generated wrapper modules under
#   <repo>/.envtest/src/<tool>/ (the build loop of hack/lib/gobuild.sh). A stamp
#   file per tool (.envtest/bin/.<tool>.stamp) records what it was built from;
#   only missing or stale tools are rebuilt.
#
# Progress goes to stderr. A failing build stops the script with go's output.
# Environment knobs: ENVTEST_DIR (default <repo>/.envtest), ENSURE_FORCE=1 to
# rebuild, ENSURE_TOOLS (default "kube-apiserver etcd kubectl helm etcdctl").
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/../.." && pwd)"
versions_file="${script_dir}/versions.env"

# shellcheck source=versions.env
. "${versions_file}"
: "${KUBERNETES_VERSION:?missing in versions.env}"
: "${ETCD_VERSION:?missing in versions.env}"
: "${HELM_VERSION:?missing in versions.env}"

gobuild_tag=ensure
# shellcheck source=../lib/gobuild.sh
. "${repo_root}/hack/lib/gobuild.sh"

envtest_dir="${ENVTEST_DIR:-${repo_root}/.envtest}"
all_tools="kube-apiserver etcd kubectl helm etcdctl"
tools="${ENSURE_TOOLS:-${all_tools}}"

# 1. An existing KUBEBUILDER_ASSETS wins; only a missing etcdctl is built, into our own bin dir.
given_assets=""
if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  if is_exe "${KUBEBUILDER_ASSETS}/kube-apiserver" && is_exe "${KUBEBUILDER_ASSETS}/etcd" \
     && is_exe "${KUBEBUILDER_ASSETS}/kubectl"; then
    if is_exe "${KUBEBUILDER_ASSETS}/etcdctl"; then
      log "using KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS} (nothing built)"
      printf '%s\n' "${KUBEBUILDER_ASSETS}"
      exit 0
    fi
    log "using KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS}; it lacks etcdctl: ensuring ${envtest_dir}/bin/etcdctl"
    given_assets="${KUBEBUILDER_ASSETS}"
  else
    log "KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS} lacks kube-apiserver/etcd/kubectl; building our own"
  fi
fi

# 2. Our own build, cached per tool.
gobuild_init "${envtest_dir}/bin" "${envtest_dir}/src" "the control plane binaries"

tool_stamp() {
  case "$1" in
    kube-apiserver|kubectl) printf 'k8s.io/kubernetes %s %s\n' "${KUBERNETES_VERSION}" "${go_version}" ;;
    etcd) printf 'go.etcd.io/etcd/server/v3 %s %s\n' "${ETCD_VERSION}" "${go_version}" ;;
    helm) printf 'helm %s %s\n' "${HELM_VERSION}" "${go_version}" ;;
    etcdctl) printf 'go.etcd.io/etcd/etcdctl/v3 %s %s\n' "${ETCD_VERSION}" "${go_version}" ;;
    *) die "unknown tool $1 (known: ${all_tools})" ;;
  esac
}

build_tool() {
  # Each tool gets a fresh wrapper module of its own.
  local tool="$1" dir="${src_dir}/$1"
  case "${tool}" in
    kube-apiserver|kubectl)
      gobuild_module "${dir}" "${tool}" k8s.io/kubernetes "${KUBERNETES_VERSION}" \
        "k8s.io/kubernetes/cmd/${tool}"
      go_build "${dir}" "${tool}" "k8s.io/kubernetes/cmd/${tool}" "$(k8s_ldflags)"
      ;;
    etcd)
      local mod=go.etcd.io/etcd/server/v3   # its root package is etcd's main
      gobuild_module "${dir}" etcd "${mod}" "${ETCD_VERSION}" "${mod}"
      go_build "${dir}" etcd "${mod}" "-s -w"
      ;;
    helm)
      local mod="helm.sh/helm/v3"
      [[ "${HELM_VERSION}" == v4.* ]] && mod="helm.sh/helm/v4"
      gobuild_module "${dir}" helm "${mod}" "${HELM_VERSION}" "${mod}/cmd/helm"
      go_build "${dir}" helm "${mod}/cmd/helm" "-s -w -X ${mod}/internal/version.version=${HELM_VERSION}"
      ;;
    etcdctl)
      local mod=go.etcd.io/etcd/etcdctl/v3   # a module of its own; its root package is main
      gobuild_module "${dir}" etcdctl "${mod}" "${ETCD_VERSION}" "${mod}"
      go_build "${dir}" etcdctl "${mod}" "-s -w"
      ;;
    *) die "unknown tool ${tool}" ;;
  esac
}

if [[ -n "${given_assets}" ]]; then
  # The build loop prints its bin dir last; here the last line must be the given assets.
  (
    gobuild_exit_if_fresh etcdctl "etcdctl ${ETCD_VERSION}"
    log "building etcdctl into ${bin_dir} with ${go_version}"
    gobuild_build_stale
  ) >&2
  printf '%s\n' "${given_assets}"
  exit 0
fi
gobuild_exit_if_fresh "${tools}" "k8s ${KUBERNETES_VERSION}, etcd ${ETCD_VERSION}, helm ${HELM_VERSION}"
log "building control plane tools into ${bin_dir} with ${go_version}: ${stale}"
log "versions: kubernetes ${KUBERNETES_VERSION} (staging ${staging_version}), etcd ${ETCD_VERSION}, helm ${HELM_VERSION}"
gobuild_build_stale

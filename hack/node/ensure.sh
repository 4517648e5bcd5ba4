#!/usr/bin/env bash
# Ensure the binaries of a local Kubernetes node exist and print their directory as the LAST
# line of stdout:
#
#     export KMS_NODE_ASSETS="$(hack/node/ensure.sh | tail -1)"
#
# Built from Go modules with the build loop of hack/lib/gobuild.sh (as hack/controlplane/ensure.sh):
# - kubelet, kube-proxy, kube-controller-manager, kube-scheduler: k8s.io/kubernetes at
#   KUBERNETES_VERSION of hack/controlplane/versions.env (the same as kube-apiserver);
# - containerd, containerd-shim-runc-v2, ctr: github.com/containerd/containerd/v2;
# - CNI plugins bridge, host-local, loopback, portmap: github.com/containernetworking/plugins
#   (into <dir>/cni/);
# - coredns: github.com/coredns/coredns;
# - pause: hack/node/pause.c, compiled statically (the pod sandbox image is made from it).
# Versions are pinned in hack/node/versions.env. runc comes from Debian (it has seccomp; a runc
# built here from Go modules has none), with iptables, iproute2 and conntrack for kube-proxy and
# the CNI bridge: apt-get installs whichever is missing.
#
# Output: <repo>/.envtest/node/bin (ENSURE_NODE_DIR overrides). A stamp per tool records what
# it was built from; only missing or stale tools are rebuilt. The tools of one Go module share
# its wrapper module (made once per version). Go runs under `nice -n 19`.
# Knobs: ENSURE_FORCE=1 rebuilds, ENSURE_NODE_TOOLS limits the tools (default: all).
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/../.." && pwd)"

# shellcheck source=../controlplane/versions.env
. "${repo_root}/hack/controlplane/versions.env"
# shellcheck source=versions.env
. "${script_dir}/versions.env"
: "${KUBERNETES_VERSION:?missing in hack/controlplane/versions.env}"
: "${CONTAINERD_VERSION:?missing in versions.env}"
: "${CNI_PLUGINS_VERSION:?missing in versions.env}"
: "${COREDNS_VERSION:?missing in versions.env}"

gobuild_tag=node
# shellcheck source=../lib/gobuild.sh
. "${repo_root}/hack/lib/gobuild.sh"

k8s_tools="kubelet kube-proxy kube-controller-manager kube-scheduler"
containerd_tools="containerd containerd-shim-runc-v2 ctr"
cni_tools="cni/bridge cni/host-local cni/loopback cni/portmap"
all_tools="${k8s_tools} ${containerd_tools} ${cni_tools} coredns pause"
tools="${ENSURE_NODE_TOOLS:-${all_tools}}"
node_dir="${ENSURE_NODE_DIR:-${repo_root}/.envtest/node}"

# ---- host packages (Debian) -----------------------------------------------------------------
missing_pkgs=()
command -v runc >/dev/null 2>&1 || missing_pkgs+=(runc)
command -v iptables >/dev/null 2>&1 || missing_pkgs+=(iptables)
command -v ip >/dev/null 2>&1 || missing_pkgs+=(iproute2)
command -v conntrack >/dev/null 2>&1 || missing_pkgs+=(conntrack)
command -v nsenter >/dev/null 2>&1 || missing_pkgs+=(util-linux)
if (( ${#missing_pkgs[@]} )); then
  [[ "$(id -u)" == 0 ]] || die "missing ${missing_pkgs[*]} and this is not root"
  log "installing ${missing_pkgs[*]} (apt-get)"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >&2
fi

# ---- the tools ------------------------------------------------------------------------------
gobuild_init "${node_dir}/bin" "${node_dir}/src" "the node binaries"
go_runner=(nice -n 19 go)

tool_stamp() {
  case "$1" in
    kubelet|kube-proxy|kube-controller-manager|kube-scheduler)
      printf 'k8s.io/kubernetes %s %s\n' "${KUBERNETES_VERSION}" "${go_version}" ;;
    containerd|containerd-shim-runc-v2|ctr)
      printf 'github.com/containerd/containerd/v2 %s %s\n' "${CONTAINERD_VERSION}" "${go_version}" ;;
    cni/*) printf 'github.com/containernetworking/plugins %s %s\n' "${CNI_PLUGINS_VERSION}" "${go_version}" ;;
    coredns) printf 'github.com/coredns/coredns %s %s\n' "${COREDNS_VERSION}" "${go_version}" ;;
    pause) printf 'pause.c %s\n' "$(sha256sum "${script_dir}/pause.c" | cut -c1-16)" ;;
    *) die "unknown tool $1 (known: ${all_tools})" ;;
  esac
}

shared_module() {
  # shared_module DIR NAME MODULE VERSION PKG: gobuild_module, unless DIR was made for VERSION.
  local dir="$1" version="$4"
  [[ -f "${dir}/.ready" && "$(cat "${dir}/.ready")" == "${version}" ]] && return 0
  gobuild_module "$@"
  printf '%s\n' "${version}" > "${dir}/.ready"
}

build_tool() {
  local tool="$1" dir mod
  case "${tool}" in
    kubelet|kube-proxy|kube-controller-manager|kube-scheduler)
      dir="${src_dir}/kubernetes"
      shared_module "${dir}" node-kubernetes k8s.io/kubernetes "${KUBERNETES_VERSION}" \
        k8s.io/kubernetes/cmd/kubelet
      go_build "${dir}" "${tool}" "k8s.io/kubernetes/cmd/${tool}" "$(k8s_ldflags)"
      ;;
    containerd|containerd-shim-runc-v2|ctr)
      mod=github.com/containerd/containerd/v2
      dir="${src_dir}/containerd"
      shared_module "${dir}" containerd "${mod}" "${CONTAINERD_VERSION}" "${mod}/cmd/containerd"
      go_build "${dir}" "${tool}" "${mod}/cmd/${tool}" \
        "-s -w -X ${mod}/version.Version=${CONTAINERD_VERSION} -X ${mod}/version.Revision=module" \
        "no_btrfs no_devmapper no_zfs no_aufs"
      ;;
    cni/*)
      local name="${tool#cni/}" kind
      mod=github.com/containernetworking/plugins
      dir="${src_dir}/cni-plugins"
      shared_module "${dir}" cni-plugins "${mod}" "${CNI_PLUGINS_VERSION}" \
        "${mod}/plugins/main/bridge"
      case "${name}" in
        bridge|loopback) kind=main ;;
        host-local) kind=ipam ;;
        portmap) kind=meta ;;
      esac
      go_build "${dir}" "${tool}" "${mod}/plugins/${kind}/${name}" \
        "-s -w -X ${mod}/pkg/utils/buildversion.BuildVersion=${CNI_PLUGINS_VERSION}"
      ;;
    coredns)
      mod=github.com/coredns/coredns
      dir="${src_dir}/coredns"
      gobuild_module "${dir}" coredns "${mod}" "${COREDNS_VERSION}" "${mod}"
      go_build "${dir}" coredns "${mod}" "-s -w -X ${mod}/coremain.GitCommit=${COREDNS_VERSION}"
      ;;
    pause)
      command -v cc >/dev/null 2>&1 || die "cc is not on PATH (needed for the pause binary)"
      log "building pause from hack/node/pause.c ..."
      cc -static -Os -Wall -Werror -o "${bin_dir}/pause.tmp" "${script_dir}/pause.c" \
        || die "cc -static failed (is libc6-dev installed?)"
      strip "${bin_dir}/pause.tmp" 2>/dev/null || true
      mv -f "${bin_dir}/pause.tmp" "${bin_dir}/pause"
      ;;
    *) die "unknown tool ${tool}" ;;
  esac
}

gobuild_exit_if_fresh "${tools}" \
  "k8s ${KUBERNETES_VERSION}, containerd ${CONTAINERD_VERSION}, CNI ${CNI_PLUGINS_VERSION}, CoreDNS ${COREDNS_VERSION}"
log "building node tools into ${bin_dir} with ${go_version}: ${stale}"
log "versions: kubernetes ${KUBERNETES_VERSION}, containerd ${CONTAINERD_VERSION}, CNI plugins ${CNI_PLUGINS_VERSION}, CoreDNS ${COREDNS_VERSION}"
gobuild_build_stale

#!/usr/bin/env bash
# Ensure the binaries of a local Kubernetes node exist and print their directory as the LAST
# line of stdout:
#
#     export KMS_NODE_ASSETS="$(hack/node/ensure.sh | tail -1)"
#
# Built from Go modules, with the wrapper-module approach of hack/controlplane/ensure.sh:
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
# it was built from; only missing or stale tools are rebuilt. Go runs under `nice -n 19`.
# Knobs: ENSURE_FORCE=1 rebuilds, ENSURE_NODE_TOOLS limits the tools (default: all).
set -euo pipefail

log() { printf '[node] %s\n' "$*" >&2; }
die() { printf '[node] ERROR: %s\n' "$*" >&2; exit 1; }

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

k8s_tools="kubelet kube-proxy kube-controller-manager kube-scheduler"
containerd_tools="containerd containerd-shim-runc-v2 ctr"
cni_tools="cni/bridge cni/host-local cni/loopback cni/portmap"
all_tools="${k8s_tools} ${containerd_tools} ${cni_tools} coredns pause"
tools="${ENSURE_NODE_TOOLS:-${all_tools}}"

node_dir="${ENSURE_NODE_DIR:-${repo_root}/.envtest/node}"
bin_dir="${node_dir}/bin"
src_dir="${node_dir}/src"

is_exe() { [[ -f "$1" && -x "$1" ]]; }

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

command -v go >/dev/null 2>&1 || die "go is not on PATH (needed to build the node binaries)"
export GOTOOLCHAIN=local   # never download another toolchain
export CGO_ENABLED=0
export GOFLAGS="-mod=mod -buildvcs=false"
go_version="$(go env GOVERSION)"

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
stamp_file() { printf '%s/.%s.stamp' "$(dirname "${bin_dir}/$1")" "$(basename "$1")"; }

up_to_date() {
  local t="$1"
  [[ "${ENSURE_FORCE:-0}" != 1 ]] && is_exe "${bin_dir}/${t}" && [[ -f "$(stamp_file "${t}")" ]] \
    && [[ "$(cat "$(stamp_file "${t}")")" == "$(tool_stamp "${t}")" ]]
}

stale=""
for tool in ${tools}; do
  tool_stamp "${tool}" >/dev/null
  up_to_date "${tool}" || stale+="${stale:+ }${tool}"
done
if [[ -z "${stale}" ]]; then
  log "binaries up to date in ${bin_dir} (k8s ${KUBERNETES_VERSION}, containerd ${CONTAINERD_VERSION}, CNI ${CNI_PLUGINS_VERSION}, CoreDNS ${COREDNS_VERSION})"
  printf '%s\n' "${bin_dir}"
  exit 0
fi

mkdir -p "${bin_dir}/cni" "${src_dir}"

k8s_semver="${KUBERNETES_VERSION#v}"
k8s_major="${k8s_semver%%.*}"
k8s_rest="${k8s_semver#*.}"
k8s_minor="${k8s_rest%%.*}"
staging_version="v0.${k8s_rest}"
go_directive="$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+(\.[0-9]+)?).*/\1/')"

run_go() {
  local dir="$1"; shift
  local out
  if ! out="$(cd "${dir}" && nice -n 19 go "$@" 2>&1)"; then
    printf '%s\n' "${out}" >&2
    die "'go $*' failed in ${dir}"
  fi
  [[ -z "${out}" ]] || printf '%s\n' "${out}" >&2
}

module_gomod() {
  local json
  json="$(cd "${src_dir}" && go mod download -json "$1")" || die "go mod download $1 failed: ${json}"
  printf '%s\n' "${json}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p'
}

write_k8s_module() {
  # As in hack/controlplane/ensure.sh: require k8s.io/kubernetes and replace every staging
  # module (required there at v0.0.0) by its release v0.<minor>.<patch>.
  local dir="$1" gomod staging m
  gomod="$(module_gomod "k8s.io/kubernetes@${KUBERNETES_VERSION}")"
  [[ -f "${gomod}" ]] || die "cannot locate go.mod of k8s.io/kubernetes@${KUBERNETES_VERSION}"
  staging="$(sed -n 's/^[[:space:]]*\(k8s\.io\/[^[:space:]]*\)[[:space:]]\{1,\}v0\.0\.0\([[:space:]].*\)\{0,1\}$/\1/p' "${gomod}" | sort -u)"
  [[ -n "${staging}" ]] || die "no staging modules found in ${gomod}"
  mkdir -p "${dir}"
  {
    printf 'module envtest.local/node-kubernetes\n\ngo %s\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' \
      "${go_directive}" "${KUBERNETES_VERSION}"
    for m in ${staging}; do printf '\t%s => %s %s\n' "${m}" "${m}" "${staging_version}"; done
    printf ')\n'
  } > "${dir}/go.mod"
}

write_plain_module() {
  local dir="$1" name="$2" mod="$3" version="$4"
  mkdir -p "${dir}"
  printf 'module envtest.local/%s\n\ngo %s\n\nrequire %s %s\n' \
    "${name}" "${go_directive}" "${mod}" "${version}" > "${dir}/go.mod"
}

k8s_ldflags() {
  local date kv flags="-s -w"
  date="$(date -u +'%Y-%m-%dT%H:%M:%SZ')"
  for kv in "gitVersion=${KUBERNETES_VERSION}" "gitMajor=${k8s_major}" "gitMinor=${k8s_minor}" \
            "gitTreeState=clean" "buildDate=${date}"; do
    flags+=" -X k8s.io/component-base/version.${kv} -X k8s.io/client-go/pkg/version.${kv}"
  done
  printf '%s' "${flags}"
}

finish() {
  # finish TOOL START: stamp it and log the time.
  tool_stamp "$1" > "$(stamp_file "$1")"
  log "built ${bin_dir}/$1 in $(( $(date +%s) - $2 ))s"
}

go_build() {
  # go_build DIR TOOL PKG LDFLAGS [TAGS]
  local dir="$1" tool="$2" pkg="$3" ldflags="$4" tags="${5:-}"
  log "building ${tool} from ${pkg} ..."
  run_go "${dir}" build -trimpath ${tags:+-tags "${tags}"} -ldflags "${ldflags}" \
    -o "${bin_dir}/${tool}.tmp" "${pkg}"
  mv -f "${bin_dir}/${tool}.tmp" "${bin_dir}/${tool}"
}

build_tool() {
  local tool="$1" start dir
  start=$(date +%s)
  case "${tool}" in
    kubelet|kube-proxy|kube-controller-manager|kube-scheduler)
      dir="${src_dir}/kubernetes"
      if [[ ! -f "${dir}/.ready" || "$(cat "${dir}/.ready")" != "${KUBERNETES_VERSION}" ]]; then
        rm -rf "${dir}"
        write_k8s_module "${dir}"
        run_go "${dir}" get "k8s.io/kubernetes/cmd/kubelet@${KUBERNETES_VERSION}"
        printf '%s\n' "${KUBERNETES_VERSION}" > "${dir}/.ready"
      fi
      go_build "${dir}" "${tool}" "k8s.io/kubernetes/cmd/${tool}" "$(k8s_ldflags)"
      ;;
    containerd|containerd-shim-runc-v2|ctr)
      local mod=github.com/containerd/containerd/v2
      dir="${src_dir}/containerd"
      if [[ ! -f "${dir}/.ready" || "$(cat "${dir}/.ready")" != "${CONTAINERD_VERSION}" ]]; then
        rm -rf "${dir}"
        write_plain_module "${dir}" containerd "${mod}" "${CONTAINERD_VERSION}"
        run_go "${dir}" get "${mod}/cmd/containerd@${CONTAINERD_VERSION}"
        printf '%s\n' "${CONTAINERD_VERSION}" > "${dir}/.ready"
      fi
      go_build "${dir}" "${tool}" "${mod}/cmd/${tool}" \
        "-s -w -X ${mod}/version.Version=${CONTAINERD_VERSION} -X ${mod}/version.Revision=module" \
        "no_btrfs no_devmapper no_zfs no_aufs"
      ;;
    cni/*)
      local mod=github.com/containernetworking/plugins name="${tool#cni/}" kind
      dir="${src_dir}/cni-plugins"
      if [[ ! -f "${dir}/.ready" || "$(cat "${dir}/.ready")" != "${CNI_PLUGINS_VERSION}" ]]; then
        rm -rf "${dir}"
        write_plain_module "${dir}" cni-plugins "${mod}" "${CNI_PLUGINS_VERSION}"
        run_go "${dir}" get "${mod}/plugins/main/bridge@${CNI_PLUGINS_VERSION}"
        printf '%s\n' "${CNI_PLUGINS_VERSION}" > "${dir}/.ready"
      fi
      case "${name}" in
        bridge|loopback) kind=main ;;
        host-local) kind=ipam ;;
        portmap) kind=meta ;;
      esac
      go_build "${dir}" "${tool}" "${mod}/plugins/${kind}/${name}" \
        "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=${CNI_PLUGINS_VERSION}"
      ;;
    coredns)
      local mod=github.com/coredns/coredns
      dir="${src_dir}/coredns"
      rm -rf "${dir}"
      write_plain_module "${dir}" coredns "${mod}" "${COREDNS_VERSION}"
      run_go "${dir}" get "${mod}@${COREDNS_VERSION}"
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
  finish "${tool}" "${start}"
}

log "building node tools into ${bin_dir} with ${go_version}: ${stale}"
log "versions: kubernetes ${KUBERNETES_VERSION}, containerd ${CONTAINERD_VERSION}, CNI plugins ${CNI_PLUGINS_VERSION}, CoreDNS ${COREDNS_VERSION}"
for tool in ${stale}; do
  build_tool "${tool}"
done
log "done"
printf '%s\n' "${bin_dir}"

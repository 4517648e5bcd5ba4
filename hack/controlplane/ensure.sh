#!/usr/bin/env bash
# Ensure kube-apiserver, etcd, kubectl and helm binaries exist for the local
# control plane (envtest style) and print their directory as the LAST line of
# stdout:
#
#     export KUBEBUILDER_ASSETS="$(hack/controlplane/ensure.sh | tail -1)"
#
# - If KUBEBUILDER_ASSETS is set and holds executable kube-apiserver, etcd and
#   kubectl, it is used as is and nothing is built.
# - Otherwise the tools are built from Go modules (pinned in versions.env) into
#   <repo>/.envtest/bin through small generated wrapper modules under
#   <repo>/.envtest/src/<tool>/. A stamp file per tool (.envtest/bin/.<tool>.stamp)
#   records what it was built from; only missing or stale tools are rebuilt.
#
# Progress goes to stderr. A failing build stops the script with go's output.
# Environment knobs: ENVTEST_DIR (default <repo>/.envtest), ENSURE_FORCE=1 to
# rebuild, ENSURE_TOOLS (default "kube-apiserver etcd kubectl helm").
set -euo pipefail

log() { printf '[ensure] %s\n' "$*" >&2; }
die() { printf '[ensure] ERROR: %s\n' "$*" >&2; exit 1; }

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/../.." && pwd)"
versions_file="${script_dir}/versions.env"

# shellcheck source=versions.env
. "${versions_file}"
: "${KUBERNETES_VERSION:?missing in versions.env}"
: "${ETCD_VERSION:?missing in versions.env}"
: "${HELM_VERSION:?missing in versions.env}"

is_exe() { [[ -f "$1" && -x "$1" ]]; }

# 1. An existing KUBEBUILDER_ASSETS wins.
if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  if is_exe "${KUBEBUILDER_ASSETS}/kube-apiserver" && is_exe "${KUBEBUILDER_ASSETS}/etcd" \
     && is_exe "${KUBEBUILDER_ASSETS}/kubectl"; then
    log "using KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS} (nothing built)"
    printf '%s\n' "${KUBEBUILDER_ASSETS}"
    exit 0
  fi
  log "KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS} lacks kube-apiserver/etcd/kubectl; building our own"
fi

envtest_dir="${ENVTEST_DIR:-${repo_root}/.envtest}"
bin_dir="${envtest_dir}/bin"
src_dir="${envtest_dir}/src"
tools="${ENSURE_TOOLS:-kube-apiserver etcd kubectl helm}"

command -v go >/dev/null 2>&1 || die "go is not on PATH (needed to build the control plane binaries)"
export GOTOOLCHAIN=local   # never download another toolchain
export CGO_ENABLED=0
export GOFLAGS="-mod=mod -buildvcs=false"
go_version="$(go env GOVERSION)"

tool_stamp() {
  # What a tool's binary was built from; a change of it rebuilds that tool only.
  case "$1" in
    kube-apiserver|kubectl) printf 'k8s.io/kubernetes %s %s\n' "${KUBERNETES_VERSION}" "${go_version}" ;;
    etcd) printf 'go.etcd.io/etcd/server/v3 %s %s\n' "${ETCD_VERSION}" "${go_version}" ;;
    helm) printf 'helm %s %s\n' "${HELM_VERSION}" "${go_version}" ;;
    *) die "unknown tool $1 (known: kube-apiserver etcd kubectl helm)" ;;
  esac
}

up_to_date() {
  local t="$1"
  [[ "${ENSURE_FORCE:-0}" != 1 ]] && is_exe "${bin_dir}/${t}" && [[ -f "${bin_dir}/.${t}.stamp" ]] \
    && [[ "$(cat "${bin_dir}/.${t}.stamp")" == "$(tool_stamp "${t}")" ]]
}

stale=""
for tool in ${tools}; do
  tool_stamp "${tool}" >/dev/null
  up_to_date "${tool}" || stale+="${stale:+ }${tool}"
done
if [[ -z "${stale}" ]]; then
  log "binaries up to date in ${bin_dir} (k8s ${KUBERNETES_VERSION}, etcd ${ETCD_VERSION}, helm ${HELM_VERSION})"
  printf '%s\n' "${bin_dir}"
  exit 0
fi

mkdir -p "${bin_dir}" "${src_dir}"

# k8s.io/kubernetes vMAJ.MIN.PATCH -> staging modules v0.MIN.PATCH
k8s_semver="${KUBERNETES_VERSION#v}"
k8s_major="${k8s_semver%%.*}"
k8s_rest="${k8s_semver#*.}"
k8s_minor="${k8s_rest%%.*}"
staging_version="v0.${k8s_rest}"
go_directive="$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+(\.[0-9]+)?).*/\1/')"

run_go() {
  # Run go in a wrapper module; on failure print its full output and stop.
  local dir="$1"; shift
  local out
  if ! out="$(cd "${dir}" && go "$@" 2>&1)"; then
    printf '%s\n' "${out}" >&2
    die "'go $*' failed in ${dir}"
  fi
  [[ -z "${out}" ]] || printf '%s\n' "${out}" >&2
}

k8s_go_mod=""
kubernetes_go_mod() {
  # The go.mod of k8s.io/kubernetes itself, from the module cache.
  if [[ -z "${k8s_go_mod}" ]]; then
    local json
    json="$(cd "${src_dir}" && go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}")" \
      || die "go mod download k8s.io/kubernetes@${KUBERNETES_VERSION} failed: ${json}"
    k8s_go_mod="$(printf '%s\n' "${json}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
    [[ -f "${k8s_go_mod}" ]] || die "cannot locate go.mod of k8s.io/kubernetes@${KUBERNETES_VERSION}"
  fi
  printf '%s\n' "${k8s_go_mod}"
}

write_k8s_module() {
  local dir="$1" name="$2"
  local gomod staging
  gomod="$(kubernetes_go_mod)"
  # Every k8s.io/* module that k8s.io/kubernetes requires at v0.0.0 is a staging
  # module (replaced by ./staging/... there); we replace it with its release.
  staging="$(sed -n 's/^[[:space:]]*\(k8s\.io\/[^[:space:]]*\)[[:space:]]\{1,\}v0\.0\.0\([[:space:]].*\)\{0,1\}$/\1/p' "${gomod}" | sort -u)"
  [[ -n "${staging}" ]] || die "no staging modules found in ${gomod}"
  mkdir -p "${dir}"
  {
    printf 'module envtest.local/%s\n\ngo %s\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' \
      "${name}" "${go_directive}" "${KUBERNETES_VERSION}"
    local m
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
  local date
  date="$(date -u +'%Y-%m-%dT%H:%M:%SZ')"
  local kv flags="-s -w"
  for kv in "gitVersion=${KUBERNETES_VERSION}" "gitMajor=${k8s_major}" "gitMinor=${k8s_minor}" \
            "gitTreeState=clean" "buildDate=${date}"; do
    flags+=" -X k8s.io/component-base/version.${kv} -X k8s.io/client-go/pkg/version.${kv}"
  done
  printf '%s' "${flags}"
}

build_tool() {
  local tool="$1" dir="${src_dir}/$1" pkg ldflags="-s -w" start
  start=$(date +%s)
  rm -rf "${dir}"
  case "${tool}" in
    kube-apiserver|kubectl)
      write_k8s_module "${dir}" "${tool}"
      pkg="k8s.io/kubernetes/cmd/${tool}"
      ldflags="$(k8s_ldflags)"
      run_go "${dir}" get "${pkg}@${KUBERNETES_VERSION}"
      ;;
    etcd)
      write_plain_module "${dir}" etcd go.etcd.io/etcd/server/v3 "${ETCD_VERSION}"
      pkg="go.etcd.io/etcd/server/v3"   # package main of etcd
      run_go "${dir}" get "${pkg}@${ETCD_VERSION}"
      ;;
    helm)
      local helm_mod="helm.sh/helm/v3"
      [[ "${HELM_VERSION}" == v4.* ]] && helm_mod="helm.sh/helm/v4"
      write_plain_module "${dir}" helm "${helm_mod}" "${HELM_VERSION}"
      pkg="${helm_mod}/cmd/helm"
      ldflags+=" -X ${helm_mod}/internal/version.version=${HELM_VERSION}"
      run_go "${dir}" get "${pkg}@${HELM_VERSION}"
      ;;
    *) die "unknown tool ${tool}" ;;
  esac
  log "building ${tool} from ${pkg} ..."
  run_go "${dir}" build -trimpath -ldflags "${ldflags}" -o "${bin_dir}/${tool}.tmp" "${pkg}"
  mv -f "${bin_dir}/${tool}.tmp" "${bin_dir}/${tool}"
  tool_stamp "${tool}" > "${bin_dir}/.${tool}.stamp"
  log "built ${bin_dir}/${tool} in $(( $(date +%s) - start ))s"
}

log "building control plane tools into ${bin_dir} with ${go_version}: ${stale}"
log "versions: kubernetes ${KUBERNETES_VERSION} (staging ${staging_version}), etcd ${ETCD_VERSION}, helm ${HELM_VERSION}"
for tool in ${stale}; do
  build_tool "${tool}"
done
log "done"
printf '%s\n' "${bin_dir}"

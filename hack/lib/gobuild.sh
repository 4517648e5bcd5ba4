# shellcheck shell=bash
# The build loop of hack/controlplane/ensure.sh and hack/node/ensure.sh (sourced by both, not
# run): Go tools built from their modules through small generated wrapper modules (one that
# requires k8s.io/kubernetes replaces each of its staging modules by the release
# v0.<minor>.<patch>), each binary cached in a bin directory next to a stamp file
# (.<tool>.stamp) that records what it was built from; only missing or stale tools are rebuilt.
#
# The sourcing script sets gobuild_tag (the tag of its log lines) before sourcing, defines
#   tool_stamp TOOL   prints what TOOL is built from (versions, go's); a change rebuilds TOOL
#   build_tool TOOL   builds TOOL into ${bin_dir} (gobuild_module, go_build)
# and then calls, in this order:
#   gobuild_init BIN_DIR SRC_DIR WHAT    go on PATH, its environment pinned
#   gobuild_exit_if_fresh TOOLS SUMMARY  sets ${stale}; none: prints BIN_DIR and exits
#   gobuild_build_stale                  builds and stamps each stale tool, prints BIN_DIR
# so that the last line of stdout is always the bin directory. Progress goes to stderr.
# KUBERNETES_VERSION must be set to build from k8s.io/kubernetes (the control plane and node
# scripts source hack/controlplane/versions.env); other modules build without it.
# Knob: ENSURE_FORCE=1 rebuilds every tool.

log() { printf '[%s] %s\n' "${gobuild_tag}" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "${gobuild_tag}" "$*" >&2; exit 1; }
is_exe() { [[ -f "$1" && -x "$1" ]]; }

# How go is run; a script may prefix it (e.g. go_runner=(nice -n 19 go)).
go_runner=(go)

gobuild_init() {
  bin_dir="$1"
  src_dir="$2"
  command -v go >/dev/null 2>&1 || die "go is not on PATH (needed to build $3)"
  export GOTOOLCHAIN=local   # never download another toolchain
  export CGO_ENABLED=0
  export GOFLAGS="-mod=mod -buildvcs=false"
  go_version="$(go env GOVERSION)"
  go_directive="$(sed -E 's/^go([0-9]+\.[0-9]+(\.[0-9]+)?).*/\1/' <<<"${go_version}")"
  [[ -n "${KUBERNETES_VERSION:-}" ]] || return 0
  # k8s.io/kubernetes vMAJ.MIN.PATCH -> staging modules v0.MIN.PATCH
  local k8s_semver="${KUBERNETES_VERSION#v}"
  local k8s_rest="${k8s_semver#*.}"
  k8s_major="${k8s_semver%%.*}"
  k8s_minor="${k8s_rest%%.*}"
  staging_version="v0.${k8s_rest}"
}

stamp_file() { printf '%s/.%s.stamp' "$(dirname "${bin_dir}/$1")" "$(basename "$1")"; }

up_to_date() {
  local t="$1"
  [[ "${ENSURE_FORCE:-0}" != 1 ]] && is_exe "${bin_dir}/${t}" && [[ -f "$(stamp_file "${t}")" ]] \
    && [[ "$(cat "$(stamp_file "${t}")")" == "$(tool_stamp "${t}")" ]]
}

gobuild_exit_if_fresh() {
  local tool
  stale=""
  for tool in $1; do
    tool_stamp "${tool}" >/dev/null   # an unknown tool stops here
    up_to_date "${tool}" || stale+="${stale:+ }${tool}"
  done
  if [[ -z "${stale}" ]]; then
    log "binaries up to date in ${bin_dir} ($2)"
    printf '%s\n' "${bin_dir}"
    exit 0
  fi
}

run_go() {
  # Run go in a wrapper module; on failure print its full output and stop.
  local dir="$1"; shift
  local out
  if ! out="$(cd "${dir}" && "${go_runner[@]}" "$@" 2>&1)"; then
    printf '%s\n' "${out}" >&2
    die "'go $*' failed in ${dir}"
  fi
  [[ -z "${out}" ]] || printf '%s\n' "${out}" >&2
}

kubernetes_go_mod() {
  # The go.mod of k8s.io/kubernetes itself, from the module cache.
  local json gomod
  json="$(cd "${src_dir}" && go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}")" \
    || die "go mod download k8s.io/kubernetes@${KUBERNETES_VERSION} failed: ${json}"
  gomod="$(printf '%s\n' "${json}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  [[ -f "${gomod}" ]] || die "cannot locate go.mod of k8s.io/kubernetes@${KUBERNETES_VERSION}"
  printf '%s\n' "${gomod}"
}

write_k8s_module() {
  local dir="$1" name="$2" gomod staging m
  [[ -n "${KUBERNETES_VERSION:-}" ]] || die "KUBERNETES_VERSION is not set (needed for k8s.io/kubernetes)"
  gomod="$(kubernetes_go_mod)"
  # Every k8s.io/* module that k8s.io/kubernetes requires at v0.0.0 is a staging
  # module (replaced by ./staging/... there); we replace it with its release.
  staging="$(sed -n 's/^[[:space:]]*\(k8s\.io\/[^[:space:]]*\)[[:space:]]\{1,\}v0\.0\.0\([[:space:]].*\)\{0,1\}$/\1/p' "${gomod}" | sort -u)"
  [[ -n "${staging}" ]] || die "no staging modules found in ${gomod}"
  mkdir -p "${dir}"
  {
    printf 'module envtest.local/%s\n\ngo %s\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' \
      "${name}" "${go_directive}" "${KUBERNETES_VERSION}"
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

gobuild_module() {
  # gobuild_module DIR NAME MODULE VERSION PKG: a new wrapper module DIR requiring
  # MODULE@VERSION, with PKG (a package of it) fetched.
  local dir="$1" name="$2" mod="$3" version="$4" pkg="$5"
  rm -rf "${dir}"
  if [[ "${mod}" == k8s.io/kubernetes ]]; then
    write_k8s_module "${dir}" "${name}"
  else
    write_plain_module "${dir}" "${name}" "${mod}" "${version}"
  fi
  run_go "${dir}" get "${pkg}@${version}"
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

go_build() {
  # go_build DIR TOOL PKG LDFLAGS [TAGS]: build PKG in wrapper module DIR into ${bin_dir}/TOOL.
  local dir="$1" tool="$2" pkg="$3" ldflags="$4" tags="${5:-}"
  log "building ${tool} from ${pkg} ..."
  mkdir -p "$(dirname "${bin_dir}/${tool}")"
  run_go "${dir}" build -trimpath ${tags:+-tags "${tags}"} -ldflags "${ldflags}" \
    -o "${bin_dir}/${tool}.tmp" "${pkg}"
  mv -f "${bin_dir}/${tool}.tmp" "${bin_dir}/${tool}"
}

gobuild_build_stale() {
  local tool start
  mkdir -p "${bin_dir}" "${src_dir}"
  for tool in ${stale}; do
    start=$(date +%s)
    build_tool "${tool}"
    tool_stamp "${tool}" > "$(stamp_file "${tool}")"
    log "built ${bin_dir}/${tool} in $(( $(date +%s) - start ))s"
  done
  log "done"
  printf '%s\n' "${bin_dir}"
}

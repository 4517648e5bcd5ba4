#!/usr/bin/env bash
# Ensure the AWS client-side tools of the tests and the benchmark exist and print their
# directory as the LAST line of stdout:
#
#     export KMS_TOOLS_BIN="$(hack/tools/ensure.sh | tail -n 1)"
#
# Built from Go modules (versions pinned in hack/tools/versions.env) with the build loop of
# hack/lib/gobuild.sh, as hack/controlplane/ensure.sh:
# - sops: github.com/getsops/sops/v3/cmd/sops (SOPS, encrypting files with --kms <arn>);
# - local-kms: github.com/nsmithuk/local-kms (a reference AWS KMS server for the benchmark).
# The Python side (boto3, the AWS CLI, the AWS Encryption SDK, moto's server) comes from the
# dev extra of pyproject.toml.
#
# Output: <repo>/.envtest/tools/bin (ENSURE_TOOLS_DIR overrides the .envtest/tools part). A
# stamp per tool records what it was built from; only missing or stale tools are rebuilt. Go
# runs under `nice -n 19`. Knobs: ENSURE_FORCE=1 rebuilds, ENSURE_AWS_TOOLS limits the tools
# (default: "sops local-kms").
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/../.." && pwd)"

# shellcheck source=versions.env
. "${script_dir}/versions.env"
: "${SOPS_VERSION:?missing in versions.env}"
: "${LOCAL_KMS_VERSION:?missing in versions.env}"

gobuild_tag=tools
# shellcheck source=../lib/gobuild.sh
. "${repo_root}/hack/lib/gobuild.sh"

all_tools="sops local-kms"
tools="${ENSURE_AWS_TOOLS:-${all_tools}}"
tools_dir="${ENSURE_TOOLS_DIR:-${repo_root}/.envtest/tools}"

gobuild_init "${tools_dir}/bin" "${tools_dir}/src" "the AWS tools"
go_runner=(nice -n 19 go)

tool_stamp() {
  case "$1" in
    sops) printf 'github.com/getsops/sops/v3 %s %s\n' "${SOPS_VERSION}" "${go_version}" ;;
    local-kms) printf 'github.com/nsmithuk/local-kms %s %s\n' "${LOCAL_KMS_VERSION}" "${go_version}" ;;
    *) die "unknown tool $1 (known: ${all_tools})" ;;
  esac
}

build_tool() {
  local tool="$1" dir="${src_dir}/$1" mod
  case "${tool}" in
    sops)
      mod=github.com/getsops/sops/v3
      gobuild_module "${dir}" sops "${mod}" "${SOPS_VERSION}" "${mod}/cmd/sops"
      go_build "${dir}" sops "${mod}/cmd/sops" "-s -w"
      ;;
    local-kms)
      mod=github.com/nsmithuk/local-kms   # its root package is local-kms's main
      gobuild_module "${dir}" local-kms "${mod}" "${LOCAL_KMS_VERSION}" "${mod}"
      go_build "${dir}" local-kms "${mod}" \
        "-s -w -X main.Version=${LOCAL_KMS_VERSION} -X main.GitCommit=${LOCAL_KMS_VERSION##*-}"
      ;;
    *) die "unknown tool ${tool}" ;;
  esac
}

gobuild_exit_if_fresh "${tools}" "sops ${SOPS_VERSION}, local-kms ${LOCAL_KMS_VERSION}"
log "building AWS tools into ${bin_dir} with ${go_version}: ${stale}"
gobuild_build_stale

#!/usr/bin/env bash
# Build the kms-operator image from the root Dockerfile (`make image` runs this).
#
#     hack/image/build.sh                               # this machine: no network in the build
#     BASE_IMAGE=python:3.11-slim hack/image/build.sh   # a machine that can pull images
#
# Without BASE_IMAGE (the default here, where no registry can be pulled from and containers
# cannot reach a package index):
#   1. the base image is made from Debian packages: `debootstrap --variant=minbase bookworm`
#      with python3 and python3-venv into a folder, trimmed, `docker import`ed as
#      kms-operator-base:bookworm (the rootfs tarball is cached in .envtest/image/);
#   2. the wheels of the project and its dependencies are built on the host (`pip wheel`, with
#      the host's Python 3.11) into hack/image/wheels/, which the Dockerfile installs with
#      --no-index;
#   3. `docker build --network=none` (the build provably needs no network).
# With BASE_IMAGE set: a plain `docker build` over that base; the builder stage runs
# `pip wheel` itself (hack/image/wheels/ left empty).
#
# A Docker daemon answering on DOCKER_HOST (or the default socket) is used; otherwise
# hack/image/dockerd.sh starts one of the project's own for the build and stops it afterwards
# by its pid (KMS_DOCKERD_KEEP=1 keeps it running). The image is also saved as a tarball,
# IMAGE_TAR (default .envtest/image/kms-operator.tar), for `ctr images import` on a node.
# Missing Debian packages (docker.io, debootstrap) are installed with apt-get.
#
# Knobs: IMAGE (default kms-operator:dev), BASE_IMAGE, IMAGE_TAR, KMS_IMAGE_REBUILD_BASE=1.
# The last line of stdout is the image reference.
set -euo pipefail

log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] ERROR: %s\n' "$*" >&2; exit 1; }

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/../.." && pwd)"
state_dir="${repo_root}/.envtest/image"
wheels_dir="${script_dir}/wheels"
image="${IMAGE:-kms-operator:dev}"
image_tar="${IMAGE_TAR:-${state_dir}/kms-operator.tar}"
local_base=kms-operator-base:bookworm
base_image="${BASE_IMAGE:-}"
suite=bookworm
base_packages=python3,python3-venv
python_minor=3.11   # Python of Debian bookworm; host wheels must match it

mkdir -p "${state_dir}"
start_all=$(date +%s)
t() { printf '%ss' "$(( $(date +%s) - $1 ))"; }

apt_install() {
  [[ "$(id -u)" == 0 ]] || die "$* missing and this is not root"
  log "installing $* (apt-get)"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# ---- the daemon -----------------------------------------------------------------------------
started_dockerd=0
if [[ -z "${DOCKER_HOST:-}" ]] && ! { command -v docker >/dev/null && docker version >/dev/null 2>&1; }; then
  # Stopped at the end only if this run started it (not one left running by hand).
  "${script_dir}/dockerd.sh" status >/dev/null 2>&1 || started_dockerd=1
  eval "$("${script_dir}/dockerd.sh" start | tail -n 1)"
fi
cleanup() {
  if [[ "${started_dockerd}" == 1 && "${KMS_DOCKERD_KEEP:-0}" != 1 ]]; then
    "${script_dir}/dockerd.sh" stop || true
  fi
}
trap cleanup EXIT
command -v docker >/dev/null || apt_install docker.io
export DOCKER_HOST="${DOCKER_HOST:-unix:///var/run/docker.sock}"
# The legacy builder needs no buildx plugin and the Dockerfile uses nothing BuildKit-only.
if ! docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi

# ---- 1. the base ----------------------------------------------------------------------------
build_args=()
if [[ -z "${base_image}" ]]; then
  base_tar="${state_dir}/base-${suite}.tar"
  base_stamp="${state_dir}/.base-${suite}.stamp"
  base_want="debootstrap --variant=minbase ${suite} ${base_packages} $(uname -m) trim2"
  if [[ "${KMS_IMAGE_REBUILD_BASE:-0}" == 1 || ! -f "${base_tar}" \
        || "$(cat "${base_stamp}" 2>/dev/null)" != "${base_want}" ]]; then
    command -v debootstrap >/dev/null || apt_install debootstrap
    s=$(date +%s)
    rootfs="${state_dir}/rootfs-${suite}"
    rm -rf "${rootfs}"
    log "debootstrap ${suite} (minbase + ${base_packages}) into ${rootfs} ..."
    # The mirror is debootstrap's default unless DEBOOTSTRAP_MIRROR is set.
    debootstrap --variant=minbase --include="${base_packages}" "${suite}" "${rootfs}" \
      ${DEBOOTSTRAP_MIRROR:+"${DEBOOTSTRAP_MIRROR}"} >"${state_dir}/debootstrap.log" 2>&1 \
      || { tail -n 30 "${state_dir}/debootstrap.log" >&2; die "debootstrap failed"; }
    # Trim what a container never reads: package caches and lists, docs, man pages, locales.
    rm -rf "${rootfs}"/var/cache/apt/* "${rootfs}"/var/lib/apt/lists/* "${rootfs}"/var/log/* \
      "${rootfs}"/usr/share/doc/* "${rootfs}"/usr/share/man/* "${rootfs}"/usr/share/info/* \
      "${rootfs}"/tmp/* "${rootfs}"/root/.cache
    find "${rootfs}/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' \
      -exec rm -rf {} + 2>/dev/null || true
    # glibc's iconv modules (9 MB): Python has its own codecs, nothing here calls iconv(3).
    rm -rf "${rootfs}"/usr/lib/*-linux-gnu/gconv
    tar -C "${rootfs}" --numeric-owner -cf "${base_tar}.tmp" .
    mv -f "${base_tar}.tmp" "${base_tar}"
    rm -rf "${rootfs}"
    printf '%s\n' "${base_want}" > "${base_stamp}"
    docker image rm -f "${local_base}" >/dev/null 2>&1 || true
    log "base rootfs made in $(t "${s}") ($(du -m "${base_tar}" | cut -f1) MB tar)"
  fi
  if ! docker image inspect "${local_base}" >/dev/null 2>&1; then
    s=$(date +%s)
    docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["python3"]' "${base_tar}" "${local_base}" >/dev/null
    log "imported ${local_base} in $(t "${s}")"
  fi
  build_args+=(--build-arg "BASE_IMAGE=${local_base}" --network=none)

  # ---- 2. the wheels, on the host -----------------------------------------------------------
  s=$(date +%s)
  host_python="${PYTHON:-python3}"
  have="$("${host_python}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  [[ "${have}" == "${python_minor}" ]] \
    || die "host ${host_python} is Python ${have}; wheels for the ${suite} base need ${python_minor} (set PYTHON)"
  deps_key="$(cat "${repo_root}/pyproject.toml" | sha256sum | cut -c1-16)-$(uname -m)"
  deps_dir="${state_dir}/wheels-${deps_key}"
  if [[ ! -f "${deps_dir}/.complete" ]]; then
    rm -rf "${state_dir}"/wheels-*
    mkdir -p "${deps_dir}"
    log "pip wheel: the dependencies (cached by pyproject.toml) ..."
    "${host_python}" -m pip wheel --quiet --wheel-dir "${deps_dir}" "${repo_root}" >&2
    rm -f "${deps_dir}"/kms_operator-*.whl
    touch "${deps_dir}/.complete"
  fi
  find "${wheels_dir}" -name '*.whl' -delete
  cp "${deps_dir}"/*.whl "${wheels_dir}/"
  "${host_python}" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "${wheels_dir}" \
    "${repo_root}" >&2 2>/dev/null \
    || "${host_python}" -m pip wheel --quiet --no-deps --wheel-dir "${wheels_dir}" "${repo_root}" >&2
  rm -rf "${repo_root}/build" "${repo_root}"/src/*.egg-info
  log "wheels ready in $(t "${s}") ($(find "${wheels_dir}" -name '*.whl' | wc -l) files)"
else
  find "${wheels_dir}" -name '*.whl' -delete
  build_args+=(--build-arg "BASE_IMAGE=${base_image}")
fi

# ---- 3. the image ---------------------------------------------------------------------------
s=$(date +%s)
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "${repo_root}/pyproject.toml" | head -n 1)"
revision="$(git -C "${repo_root}" rev-parse HEAD 2>/dev/null || echo unknown)"
log "docker build ${image} ..."
docker build "${build_args[@]}" \
  --build-arg "VERSION=${version}" --build-arg "REVISION=${revision}" \
  --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  -t "${image}" -f "${repo_root}/Dockerfile" "${repo_root}" >"${state_dir}/build.log" 2>&1 \
  || { tail -n 40 "${state_dir}/build.log" >&2; die "docker build failed (log ${state_dir}/build.log)"; }
find "${wheels_dir}" -name '*.whl' -delete
size=$(docker image inspect -f '{{.Size}}' "${image}")
log "built ${image} in $(t "${s}"): $(( size / 1000000 )) MB"

s=$(date +%s)
mkdir -p "$(dirname "${image_tar}")"
docker save -o "${image_tar}.tmp" "${image}"
mv -f "${image_tar}.tmp" "${image_tar}"
log "saved ${image_tar} in $(t "${s}"); all done in $(t "${start_all}")"
printf '%s\n' "${image}"

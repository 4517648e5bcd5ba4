#!/usr/bin/env bash
# A Docker daemon of the project's own, for machines where none runs (CI here, a fresh VM):
#
#     hack/image/dockerd.sh start     # prints `export DOCKER_HOST=unix://...` as its last line
#     hack/image/dockerd.sh stop      # stops that daemon by its pid (and nothing else)
#     hack/image/dockerd.sh status
#
# It has its own --data-root (<repo>/.envtest/image/docker), --exec-root and socket under
# /run/kms-dockerd, and pid file, and touches no host networking: --iptables=false,
# --ip-masq=false, --bridge=none (builds run with --network=none). Debian's docker.io package
# provides dockerd (and the containerd it starts for itself); it is installed when missing.
# Knobs: KMS_DOCKERD_RUN (default /run/kms-dockerd), KMS_DOCKERD_DATA (default
# <repo>/.envtest/image/docker).
set -euo pipefail

log() { printf '[dockerd] %s\n' "$*" >&2; }
die() { printf '[dockerd] ERROR: %s\n' "$*" >&2; exit 1; }

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/../.." && pwd)"
run_dir="${KMS_DOCKERD_RUN:-/run/kms-dockerd}"
data_root="${KMS_DOCKERD_DATA:-${repo_root}/.envtest/image/docker}"
socket="${run_dir}/docker.sock"
pidfile="${run_dir}/dockerd.pid"
logfile="${run_dir}/dockerd.log"
host="unix://${socket}"

ensure_packages() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  [[ -x /usr/bin/docker || -x /usr/local/bin/docker ]] || missing+=(docker.io)
  if (( ${#missing[@]} )); then
    [[ "$(id -u)" == 0 ]] || die "dockerd is missing and this is not root: install ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || die "dockerd is missing and there is no apt-get"
    log "installing ${missing[*]} (apt-get)"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
}

running_pid() {
  [[ -f "${pidfile}" ]] || return 1
  local pid
  pid="$(cat "${pidfile}")"
  [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null || return 1
  [[ "$(cat "/proc/${pid}/comm" 2>/dev/null)" == dockerd ]] || return 1
  printf '%s\n' "${pid}"
}

start() {
  ensure_packages
  if pid="$(running_pid)"; then
    log "already running (pid ${pid})"
    printf 'export DOCKER_HOST=%s\n' "${host}"
    return 0
  fi
  mkdir -p "${run_dir}" "${data_root}"
  rm -f "${socket}" "${pidfile}"
  log "starting dockerd (data root ${data_root}, socket ${socket})"
  # setsid: its own session, so a Ctrl-C of the caller does not reach it.
  setsid dockerd \
    --data-root "${data_root}" \
    --exec-root "${run_dir}/exec" \
    -H "${host}" \
    --pidfile "${pidfile}" \
    --iptables=false --ip6tables=false --ip-masq=false --bridge=none \
    --userland-proxy=false \
    --log-level=warn \
    </dev/null >"${logfile}" 2>&1 &
  local launcher=$!
  local i
  for (( i = 0; i < 120; i++ )); do
    if DOCKER_HOST="${host}" docker version >/dev/null 2>&1; then
      log "ready (pid $(cat "${pidfile}"), log ${logfile})"
      printf 'export DOCKER_HOST=%s\n' "${host}"
      return 0
    fi
    kill -0 "${launcher}" 2>/dev/null || { tail -n 30 "${logfile}" >&2; die "dockerd exited"; }
    sleep 0.5
  done
  tail -n 30 "${logfile}" >&2
  die "dockerd did not answer on ${socket} within 60s"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    log "not running"
    rm -f "${pidfile}" "${socket}"
    return 0
  fi
  log "stopping dockerd (pid ${pid})"
  kill -TERM "${pid}"
  local i
  for (( i = 0; i < 60; i++ )); do
    kill -0 "${pid}" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "${pid}" 2>/dev/null; then
    log "still running after 30s: SIGKILL"
    kill -KILL "${pid}" 2>/dev/null || true
  fi
  # dockerd unmounts its overlays on a clean stop; after a SIGKILL, do it here.
  local m
  while read -r m; do umount "${m}" 2>/dev/null || umount -l "${m}" 2>/dev/null || true
  done < <(awk -v a="${data_root}" -v b="${run_dir}" 'index($2, a) == 1 || index($2, b) == 1 {print $2}' /proc/mounts | sort -r)
  rm -f "${pidfile}" "${socket}"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if pid="$(running_pid)"; then echo "running (pid ${pid}, DOCKER_HOST=${host})"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

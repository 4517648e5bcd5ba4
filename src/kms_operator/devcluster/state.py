"""What a running dev cluster has changed on this machine, written down in
``/run/kms-devcluster/state.json`` so that a stop, or the next start after a harness died, can
undo all of it (:func:`teardown`, :func:`cleanup_stale`).

The state holds the harness's pid, its work directory, bridge and containerd socket, the pids
of the processes it started and the sysctls it changed (with their previous values).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from kms_operator.devcluster import host

__all__ = [
    "POD_CGROUP",
    "RUN_DIR",
    "cleanup_stale",
    "clear",
    "read",
    "teardown",
    "write",
    "write_field",
]

RUN_DIR = Path("/run/kms-devcluster")
#: The kubelet's cgroup of the pods (``cgroupfs`` driver): their processes are found there.
POD_CGROUP = "kubepods"


def _state_file() -> Path:
    return RUN_DIR / "state.json"


def read() -> dict[str, Any]:
    try:
        data = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write(state: dict[str, Any]) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    tmp = _state_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(_state_file())


def write_field(name: str, value: Any) -> None:
    state = read()
    state[name] = value
    write(state)


def clear() -> None:
    with contextlib.suppress(FileNotFoundError):
        _state_file().unlink()


def teardown(work_dir: Path, bridge: str, containerd_socket: Path) -> list[str]:
    """Undo a node's host changes: pods' processes, shims, mounts, cgroups, chains, bridge."""
    problems: list[str] = []
    try:
        host.kill_cgroup_processes(POD_CGROUP)
    except host.HostError as exc:
        problems.append(str(exc))
    host.kill_processes_mentioning([str(containerd_socket)])
    left = host.unmount_under(work_dir)
    if left:
        problems.append(f"still mounted: {', '.join(map(str, left))}")
    cgroups = host.remove_cgroups(POD_CGROUP)
    if cgroups:
        problems.append(f"cgroups left: {', '.join(map(str, cgroups[:5]))}")
    host.cleanup_iptables()
    host.delete_bridge(bridge)
    return problems


def cleanup_stale() -> None:
    """Clean up after a dev cluster whose harness died without stopping it."""
    state = read()
    if not state:
        return
    work_dir = Path(state.get("work_dir", ""))
    for pid in state.get("pids", {}).values():
        # Only a process still running from that work dir's binaries and files.
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if str(work_dir) in cmdline:
                os.kill(int(pid), 9)
    if str(work_dir) not in ("", "."):
        teardown(
            work_dir,
            state.get("bridge", "kmsbr0"),
            Path(state.get("containerd_socket", work_dir / "containerd" / "x.sock")),
        )
        if work_dir.name.startswith("kms-devcluster-"):
            shutil.rmtree(work_dir, ignore_errors=True)
    sysctls = state.get("sysctls")
    if isinstance(sysctls, dict):
        host.restore_sysctls({str(k): str(v) for k, v in sysctls.items()})
    clear()

"""What a local node changes on the host, and how to undo each change.

Everything here acts on names and paths the dev cluster owns: its bridge (``kmsbr0``), the
iptables chains of kube-proxy (``KUBE-*``), the CNI plugins (``CNI-*``) and its own guard chain
(``KMS-DEVCLUSTER``), mounts under its work directory, the ``kubepods`` cgroups of its kubelet,
and processes found by their own pid (pods' cgroups) or by the containerd socket of this work
directory. Nothing is matched by a broad process name.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = [
    "GUARD_CHAIN",
    "HostError",
    "cleanup_iptables",
    "create_bridge",
    "delete_bridge",
    "install_guard",
    "kill_cgroup_processes",
    "kill_processes_mentioning",
    "mounts_under",
    "remove_cgroups",
    "restore_sysctls",
    "run",
    "set_sysctls",
    "unmount_under",
]

GUARD_CHAIN = "KMS-DEVCLUSTER"
_CHAIN_PREFIXES = ("KUBE-", "CNI-", GUARD_CHAIN)
_CGROUP_ROOT = Path("/sys/fs/cgroup")


class HostError(RuntimeError):
    """A host command needed by the dev cluster failed."""


def run(*argv: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise HostError(
            f"`{' '.join(argv)}` failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
        )
    return proc


# --------------------------------------------------------------------------------------------
# Network: the bridge, the guard, the chains
# --------------------------------------------------------------------------------------------


def create_bridge(name: str, gateway: ipaddress.IPv4Interface, service_cidr: str) -> None:
    """The pods' bridge with the gateway address (the node's IP), and the Service range on it.

    The CNI bridge plugin finds the bridge existing and uses it. The route of the Service range
    through the bridge keeps a packet to a ClusterIP that kube-proxy has not (yet) rewritten on
    this machine instead of sending it to the default route.
    """
    delete_bridge(name)
    run("ip", "link", "add", name, "type", "bridge")
    run("ip", "addr", "add", str(gateway), "dev", name)
    run("ip", "link", "set", name, "up")
    run("ip", "route", "replace", service_cidr, "dev", name)


def delete_bridge(name: str) -> None:
    if run("ip", "link", "show", name, check=False).returncode == 0:
        run("ip", "link", "delete", name, check=False)


#: Needed by pods behind Services: routing back out of the bridge, and bridged replies seen
#: by iptables (so conntrack undoes kube-proxy's DNAT).
NODE_SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/bridge/bridge-nf-call-iptables": "1",
}


def set_sysctls(wanted: dict[str, str] | None = None) -> dict[str, str]:
    """Set the sysctls a node needs; returns the previous values of those it changed."""
    changed: dict[str, str] = {}
    for key, value in (wanted or NODE_SYSCTLS).items():
        path = Path("/proc/sys") / key
        if not path.exists():
            continue  # e.g. no br_netfilter: Services then work between pods less well
        try:
            before = path.read_text().strip()
            if before != value:
                path.write_text(value)
                changed[key] = before
        except OSError as exc:
            raise HostError(f"cannot set {key.replace('/', '.')}={value}: {exc}") from exc
    return changed


def restore_sysctls(previous: dict[str, str]) -> None:
    for key, value in previous.items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / key).write_text(value)


def install_guard(pod_cidr: str, bridge: str) -> None:
    """Pods reach only this machine: a packet from the pod range leaving by another interface
    than the bridge is dropped (the CNI bridge does no masquerade either)."""
    _iptables("filter", "-N", GUARD_CHAIN, check=False)
    _iptables("filter", "-F", GUARD_CHAIN)
    _iptables("filter", "-A", GUARD_CHAIN, "-s", pod_cidr, "!", "-o", bridge, "-j", "DROP")
    if _iptables("filter", "-C", "FORWARD", "-j", GUARD_CHAIN, check=False).returncode != 0:
        _iptables("filter", "-I", "FORWARD", "1", "-j", GUARD_CHAIN)


def _iptables(
    table: str, *args: str, check: bool = True, binary: str = "iptables"
) -> subprocess.CompletedProcess[str]:
    return run(binary, "-w", "5", "-t", table, *args, check=check)


def cleanup_iptables() -> list[str]:
    """Remove every rule jumping to, and every chain named, KUBE-*, CNI-* or the guard chain,
    for IPv4 and IPv6 (kube-proxy writes both). Returns the chains removed. Built-in chains
    keep every other rule."""
    removed: list[str] = []
    for binary in ("iptables", "ip6tables"):
        for table in ("nat", "filter", "mangle"):
            removed += _cleanup_table(binary, table)
    return removed


def _jumps_to_ours(parts: list[str]) -> bool:
    return any(
        parts[i] in ("-j", "-g") and parts[i + 1].startswith(_CHAIN_PREFIXES)
        for i in range(len(parts) - 1)
    )


def _cleanup_table(binary: str, table: str) -> list[str]:
    try:
        listing = _iptables(table, "-S", check=False, binary=binary)
    except OSError:  # no ip6tables binary
        return []
    if listing.returncode != 0:
        return []
    ours: list[str] = []
    jumps: list[list[str]] = []
    for line in listing.stdout.splitlines():
        parts = shlex.split(line)  # comments are quoted and hold spaces
        if len(parts) < 2:
            continue
        if parts[0] == "-N" and parts[1].startswith(_CHAIN_PREFIXES):
            ours.append(parts[1])
        elif (
            parts[0] == "-A" and not parts[1].startswith(_CHAIN_PREFIXES) and _jumps_to_ours(parts)
        ):
            jumps.append(["-D", *parts[1:]])
    for rule in jumps:
        _iptables(table, *rule, check=False, binary=binary)
    for chain in ours:
        _iptables(table, "-F", chain, check=False, binary=binary)
    removed = []
    for chain in ours:
        if _iptables(table, "-X", chain, check=False, binary=binary).returncode == 0:
            removed.append(f"{binary}/{table}/{chain}")
    return removed


# --------------------------------------------------------------------------------------------
# Mounts
# --------------------------------------------------------------------------------------------


def _unescape(field: str) -> str:
    return (
        field.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below ``root``, deepest (and latest) first."""
    prefix = str(root.resolve())
    found: list[Path] = []
    with open("/proc/self/mounts", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) < 2:
                continue
            target = _unescape(fields[1])
            if target == prefix or target.startswith(prefix + "/"):
                found.append(Path(target))
    found.reverse()
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_under(root: Path, attempts: int = 5) -> list[Path]:
    """Unmount everything below ``root``; returns what is still mounted (empty on success)."""
    for _ in range(attempts):
        left = mounts_under(root)
        if not left:
            return []
        for target in left:
            if run("umount", str(target), check=False).returncode != 0:
                run("umount", "-l", str(target), check=False)
    return mounts_under(root)


# --------------------------------------------------------------------------------------------
# Processes and cgroups
# --------------------------------------------------------------------------------------------


def _cgroup_dirs(name: str) -> Iterator[Path]:
    """The ``name`` cgroup (e.g. ``kubepods``) in every mounted hierarchy."""
    if not _CGROUP_ROOT.is_dir():
        return
    for hierarchy in sorted(_CGROUP_ROOT.iterdir()):
        candidate = hierarchy / name
        if candidate.is_dir():
            yield candidate


def _pids_in(directory: Path) -> set[int]:
    pids: set[int] = set()
    for procs in directory.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in procs.read_text().split())
    return pids


def kill_cgroup_processes(name: str, timeout: float = 20.0) -> int:
    """SIGKILL every process in the ``name`` cgroups (the pods' containers); returns how many."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        pids: set[int] = set()
        for directory in _cgroup_dirs(name):
            pids |= _pids_in(directory)
        pids.discard(os.getpid())
        if not pids:
            return len(killed)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
        if time.monotonic() > deadline:
            raise HostError(f"processes left in cgroup {name} after {timeout:.0f}s: {sorted(pids)}")
        time.sleep(0.2)


def remove_cgroups(name: str) -> list[Path]:
    """rmdir the ``name`` cgroups bottom-up in every hierarchy; returns those left."""
    left: list[Path] = []
    for directory in _cgroup_dirs(name):
        dirs = sorted(
            (p for p in directory.rglob("*") if p.is_dir()),
            key=lambda p: len(p.parts),
            reverse=True,
        )
        for sub in [*dirs, directory]:
            try:
                sub.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                left.append(sub)
    return left


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def kill_processes_mentioning(needles: Iterable[str], timeout: float = 10.0) -> list[int]:
    """SIGKILL processes whose command line contains one of ``needles`` as a whole argument or
    inside one (used with this work directory's containerd socket: its shims). Returns pids."""
    wanted = [n for n in needles if n]
    me = os.getpid()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        argv = _cmdline(int(entry.name))
        if any(needle in arg for arg in argv for needle in wanted):
            found.append(int(entry.name))
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in found):
        time.sleep(0.1)
    return found

"""Where the binaries are, found the envtest way: a directory named by an environment variable,
else one under ``<repo>/.envtest`` as built by the ``hack/*/ensure.sh`` scripts.

- The control plane (kube-apiserver, etcd, usually kubectl and helm): ``KUBEBUILDER_ASSETS``,
  then ``KMS_ASSETS_DIR``, then ``<repo>/.envtest/bin`` (``hack/controlplane/ensure.sh``).
- etcdctl (:func:`find_etcdctl`, for the tests that read etcd): next to the control plane's
  binaries, else in ``<repo>/.envtest/bin``, where ``hack/controlplane/ensure.sh`` builds it
  even when ``KUBEBUILDER_ASSETS`` names a directory without it.
- The node: ``KMS_NODE_ASSETS``, then ``<repo>/.envtest/node/bin`` (``hack/node/ensure.sh``).

A directory named by an environment variable is authoritative: if it lacks a binary, the search
fails rather than falling back silently.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "CONTROL_PLANE_BINARIES",
    "ENSURE_CONTROL_PLANE_SCRIPT",
    "ENSURE_NODE_SCRIPT",
    "NODE_BINARIES",
    "NodeAssetsError",
    "find_binaries",
    "find_etcdctl",
    "find_node_assets",
    "missing_binaries",
    "runc",
]

ENSURE_CONTROL_PLANE_SCRIPT = "hack/controlplane/ensure.sh"
CONTROL_PLANE_BINARIES: tuple[str, ...] = ("kube-apiserver", "etcd")
ENSURE_NODE_SCRIPT = "hack/node/ensure.sh"
NODE_BINARIES: tuple[str, ...] = (
    "kubelet",
    "kube-proxy",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "coredns",
    "pause",
    "cni/bridge",
    "cni/host-local",
    "cni/loopback",
    "cni/portmap",
)


class NodeAssetsError(RuntimeError):
    """The node's binaries cannot be found."""


def missing_binaries(directory: Path, names: tuple[str, ...]) -> list[str]:
    """Those of ``names`` that are not an executable file in ``directory``."""
    return [
        name
        for name in names
        if not ((directory / name).is_file() and os.access(directory / name, os.X_OK))
    ]


def _above(relative: str) -> Iterator[Path]:
    """``relative`` under the current directory, this file's, and each of their parents."""
    seen: set[Path] = set()
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for directory in (start, *start.parents):
            candidate = directory / relative
            if candidate not in seen:
                seen.add(candidate)
                yield candidate


def find_binaries(
    what: str,
    names: tuple[str, ...],
    *,
    variables: tuple[str, ...],
    under_repo: str,
    hint: str,
    error: type[Exception],
) -> Path:
    """The directory holding every one of ``names``: the first of ``variables`` that is set,
    else the first ``<repo>/<under_repo>`` complete; ``error`` (with ``hint``) otherwise."""
    for variable in variables:
        value = os.environ.get(variable)
        if value:
            directory = Path(value).expanduser().resolve()
            missing = missing_binaries(directory, names)
            if missing:
                raise error(
                    f"{variable}={value} does not hold executable {', '.join(missing)}; {hint}"
                )
            return directory
    looked: list[str] = []
    for candidate in _above(under_repo):
        if candidate.is_dir():
            looked.append(str(candidate))
            if not missing_binaries(candidate, names):
                return candidate
    where = ", ".join(looked) or f"no {under_repo} above the current directory"
    unset = " and ".join(variables)
    raise error(f"{what} not found ({unset} unset; looked in: {where}); {hint}")


def find_etcdctl(control_plane_assets: Path) -> Path | None:
    """etcdctl in ``control_plane_assets``, else in the first ``<repo>/.envtest/bin`` holding it."""
    for directory in (control_plane_assets, *_above(".envtest/bin")):
        if not missing_binaries(directory, ("etcdctl",)):
            return directory / "etcdctl"
    return None


def find_node_assets() -> Path:
    return find_binaries(
        "node binaries",
        NODE_BINARIES,
        variables=("KMS_NODE_ASSETS",),
        under_repo=".envtest/node/bin",
        hint=f"run `{ENSURE_NODE_SCRIPT}` (or point KMS_NODE_ASSETS at its output directory)",
        error=NodeAssetsError,
    )


def runc() -> Path:
    """Debian's runc (with seccomp)."""
    found = shutil.which("runc") or ("/usr/sbin/runc" if Path("/usr/sbin/runc").exists() else None)
    if found is None:
        raise NodeAssetsError(f"runc is not installed ({ENSURE_NODE_SCRIPT} installs Debian's)")
    return Path(found)

"""Where the node's binaries are: ``KMS_NODE_ASSETS``, else ``<repo>/.envtest/node/bin`` as
built by ``hack/node/ensure.sh``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["ENSURE_NODE_SCRIPT", "NODE_BINARIES", "NodeAssetsError", "find_node_assets", "runc"]

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


def _missing(directory: Path) -> list[str]:
    return [
        name
        for name in NODE_BINARIES
        if not ((directory / name).is_file() and os.access(directory / name, os.X_OK))
    ]


def find_node_assets() -> Path:
    hint = f"run `{ENSURE_NODE_SCRIPT}` (or point KMS_NODE_ASSETS at its output directory)"
    value = os.environ.get("KMS_NODE_ASSETS")
    if value:
        directory = Path(value).expanduser().resolve()
        missing = _missing(directory)
        if missing:
            raise NodeAssetsError(f"KMS_NODE_ASSETS={value} lacks {', '.join(missing)}; {hint}")
        return directory
    looked = []
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for directory in (start, *start.parents):
            candidate = directory / ".envtest" / "node" / "bin"
            if candidate.is_dir():
                looked.append(str(candidate))
                if not _missing(candidate):
                    return candidate
    where = ", ".join(looked) or "no .envtest/node/bin above the current directory"
    raise NodeAssetsError(f"node binaries not found (looked in: {where}); {hint}")


def runc() -> Path:
    """Debian's runc (with seccomp)."""
    found = shutil.which("runc") or ("/usr/sbin/runc" if Path("/usr/sbin/runc").exists() else None)
    if found is None:
        raise NodeAssetsError("runc is not installed (hack/node/ensure.sh installs Debian's)")
    return Path(found)

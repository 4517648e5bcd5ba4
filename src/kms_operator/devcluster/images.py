"""Images for the local node: the pause image made here, and archives moved into containerd.

No registry is reached: the sandbox (pause) image is written as a ``docker save`` archive from
the statically built ``pause`` binary, and every image (``docker save`` output) goes into
containerd's ``k8s.io`` namespace with ``ctr images import``.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import tarfile
from pathlib import Path

from kms_operator.devcluster.host import run

__all__ = ["PAUSE_IMAGE", "import_archive", "write_pause_archive"]

#: The sandbox image of the local node (containerd's pinned ``sandbox`` image).
PAUSE_IMAGE = "localhost/kms-pause:1"

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def _layer(binary: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("pause")
        data = binary.read_bytes()
        info.size = len(data)
        info.mode = 0o755
        info.mtime = 0
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_pause_archive(binary: Path, target: Path, reference: str = PAUSE_IMAGE) -> Path:
    """Write a ``docker save`` style archive of a one-file image running ``/pause``."""
    layer = _layer(binary)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": _ARCH.get(platform.machine(), platform.machine()),
        "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "kms-operator devcluster: hack/node/pause.c"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = diff_id.removeprefix("sha256:") + "/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [reference], "Layers": [layer_name]}]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, mode="w") as tar:
        for name, data in (
            (config_name, config_bytes),
            (layer_name, layer),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return target


def import_archive(ctr: Path, address: Path, archive: Path, *, pinned: bool = False) -> str:
    """``ctr -n k8s.io images import`` of an archive; returns ctr's output."""
    argv = [str(ctr), "--address", str(address), "--namespace", "k8s.io", "images", "import"]
    if pinned:
        argv += ["--label", "io.cri-containerd.pinned=pinned"]
    argv.append(str(archive))
    return run(*argv, timeout=600).stdout

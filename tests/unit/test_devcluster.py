"""The dev cluster's configuration and images, without starting anything (the e2e tier runs
them for real)."""

from __future__ import annotations

import json
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml

from kms_operator.devcluster import config, host, images

pytestmark = pytest.mark.unit


def _layout(tmp_path: Path) -> config.NodeLayout:
    return config.NodeLayout(work_dir=tmp_path)


def test_containerd_config_restricts_oom_score_adj_and_uses_local_paths(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    text = config.containerd_toml(layout, Path("/usr/sbin/runc"), tmp_path / "cni", "x/pause:1")
    conf = tomllib.loads(text)
    assert conf["version"] == 3
    runtime = conf["plugins"]["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["netns_mounts_under_state_dir"] is True
    runc = runtime["containerd"]["runtimes"]["runc"]["options"]
    assert runc == {
        "BinaryName": "/usr/sbin/runc",
        "Root": str(tmp_path / "containerd" / "runc"),
        "SystemdCgroup": False,
    }
    images_conf = conf["plugins"]["io.containerd.cri.v1.images"]
    assert images_conf["pinned_images"]["sandbox"] == "x/pause:1"
    for path in (conf["root"], conf["state"], conf["grpc"]["address"]):
        assert path.startswith(str(tmp_path))


def test_kubelet_config_allows_cgroup_v1_with_cgroupfs_and_no_swap(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    conf = yaml.safe_load(
        config.kubelet_yaml(
            layout,
            ca_file=tmp_path / "ca.crt",
            port=1,
            healthz_port=2,
            resolv_conf=tmp_path / "resolv.conf",
        )
    )
    assert conf["failCgroupV1"] is False
    assert conf["cgroupDriver"] == "cgroupfs"
    assert conf["failSwapOn"] is True
    assert conf["oomScoreAdj"] == 0
    assert conf["authentication"]["anonymous"]["enabled"] is False
    assert conf["authorization"]["mode"] == "Webhook"
    assert conf["clusterDNS"] == [layout.node_ip]


def test_cni_config_never_masquerades_and_routes_pods_to_the_node(tmp_path: Path) -> None:
    bridge = config.cni_conflist(_layout(tmp_path))["plugins"][0]
    assert bridge["ipMasq"] is False and bridge["isDefaultGateway"] is True
    assert bridge["ipam"]["dataDir"].startswith(str(tmp_path))


def test_corefile_answers_the_cluster_domain_only(tmp_path: Path) -> None:
    text = config.corefile(
        _layout(tmp_path), kubeconfig=tmp_path / "k", health_port=1, ready_port=2
    )
    assert "forward" not in text
    assert "kubernetes cluster.local" in text


def test_pause_archive_is_a_docker_save_archive_of_one_file(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF pause")
    archive = images.write_pause_archive(binary, tmp_path / "pause.tar", "localhost/p:1")
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest[0]["RepoTags"] == ["localhost/p:1"]
        image_config = json.load(tar.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
        assert image_config["config"]["Entrypoint"] == ["/pause"]
        layer = tar.extractfile(manifest[0]["Layers"][0])
        assert layer is not None
        with tarfile.open(fileobj=layer) as inner:
            member = inner.getmember("pause")
            assert member.mode == 0o755
            assert inner.extractfile(member).read() == b"\x7fELF pause"  # type: ignore[union-attr]


def test_iptables_cleanup_deletes_jumps_with_quoted_comments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listing = "\n".join(
        [
            "-P FORWARD ACCEPT",
            "-N KUBE-FORWARD",
            "-N DOCKER",
            '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
            "-A FORWARD -j DOCKER",
            "-A KUBE-FORWARD -j ACCEPT",
        ]
    )
    calls: list[tuple[str, ...]] = []

    def fake(table: str, *args: str, check: bool = True, binary: str = "iptables") -> object:
        calls.append((binary, table, *args))

        class Done:
            returncode = 0
            stdout = listing if args == ("-S",) and table == "filter" else ""

        return Done()

    monkeypatch.setattr(host, "_iptables", fake)
    removed = host._cleanup_table("iptables", "filter")
    assert removed == ["iptables/filter/KUBE-FORWARD"]
    assert (
        "iptables",
        "filter",
        "-D",
        "FORWARD",
        "-m",
        "comment",
        "--comment",
        "kubernetes forwarding rules",
        "-j",
        "KUBE-FORWARD",
    ) in calls
    assert not any("DOCKER" in call for call in calls)


def test_mounts_under_lists_deepest_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        f"tmpfs {tmp_path}/a tmpfs rw 0 0\n"
        f"overlay {tmp_path}/a/b\\040c overlay rw 0 0\n"
        "proc /proc proc rw 0 0\n"
    )
    real_open = open

    def fake_open(path: str, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        return real_open(mounts if path == "/proc/self/mounts" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    assert host.mounts_under(tmp_path) == [tmp_path / "a" / "b c", tmp_path / "a"]

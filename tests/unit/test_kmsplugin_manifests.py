"""manifests/kms-plugin: the static pod, the EncryptionConfiguration and the kubeadm excerpt
agree with each other and with ``kms-operator kms-plugin serve``."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from kms_operator.cli.kms_plugin import serve

pytestmark = pytest.mark.unit

_DIR = Path(__file__).resolve().parents[2] / "manifests" / "kms-plugin"


def _load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((_DIR / name).read_text())
    return loaded


@pytest.fixture
def pod() -> dict[str, Any]:
    return _load("kms-plugin.yaml")


def _serve_options(pod: dict[str, Any]) -> dict[str, Any]:
    [container] = pod["spec"]["containers"]
    assert container["command"] == ["kms-operator"]
    assert container["args"][:2] == ["kms-plugin", "serve"]
    return dict(serve.make_context("serve", list(container["args"][2:])).params)


def test_the_static_pod_runs_serve_with_options_it_knows(pod: dict[str, Any]) -> None:
    options = _serve_options(pod)

    assert str(options["socket_path"]) == "/var/run/kms-operator/kms.sock"
    assert options["key_name"] == "kube-apiserver"
    assert options["log_format"] == "json"


def test_every_path_of_serve_is_on_a_host_volume_and_the_root_key_read_only(
    pod: dict[str, Any],
) -> None:
    options = _serve_options(pod)
    [container] = pod["spec"]["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}

    for option, read_only in (
        ("socket_path", False),
        ("store_path", False),
        ("root_key_file", True),
    ):
        directory = str(PurePosixPath(str(options[option])).parent)
        mount = mounts[directory]
        assert mount.get("readOnly", False) is read_only, option
        host = volumes[mount["name"]]["hostPath"]
        assert host == {"path": directory, "type": "Directory"}, option


def test_the_static_pod_is_as_restricted_as_a_host_process_allows(pod: dict[str, Any]) -> None:
    spec = pod["spec"]
    [container] = spec["containers"]
    context = container["securityContext"]

    assert spec["hostNetwork"] is True  # no pod network before the API server serves
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert context["runAsNonRoot"] is True and context["runAsUser"] == 65532
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not container.get("ports")
    assert "ghcr.io/kms-operator/kms-operator:" in container["image"]


def test_the_encryption_configuration_calls_the_plugins_socket_then_identity(
    pod: dict[str, Any],
) -> None:
    config = _load("encryption-configuration.yaml")
    [rule] = config["resources"]
    kms, identity = rule["providers"]

    assert config["kind"] == "EncryptionConfiguration"
    assert rule["resources"] == ["secrets"]
    assert kms["kms"]["apiVersion"] == "v2"
    assert kms["kms"]["name"] == "kms-operator"
    assert kms["kms"]["endpoint"] == f"unix://{_serve_options(pod)['socket_path']}"
    assert identity == {"identity": {}}


def test_the_kubeadm_excerpt_mounts_the_configuration_and_the_socket_directory(
    pod: dict[str, Any],
) -> None:
    api_server = _load("kubeadm-cluster-configuration.yaml")["apiServer"]
    socket_dir = str(PurePosixPath(str(_serve_options(pod)["socket_path"])).parent)
    [flag] = api_server["extraArgs"]
    mounted = {v["mountPath"]: v for v in api_server["extraVolumes"]}

    assert flag["name"] == "encryption-provider-config"
    assert str(PurePosixPath(flag["value"]).parent) in mounted
    assert mounted[socket_dir]["hostPath"] == socket_dir

"""Fixtures for end-to-end tests against a real cluster.

Where the cluster comes from, in order:

1. ``KMS_E2E_USE_KUBECONFIG=1``: the cluster of ``$KUBECONFIG`` (or ``~/.kube/config``), as is.
2. ``docker info`` succeeds and ``kind`` is on PATH: the kind cluster ``kms-e2e``
   (``KMS_E2E_CLUSTER`` overrides the name), created if absent (``KMS_E2E_KIND_IMAGE`` picks
   the node image) and kept afterwards unless ``KMS_E2E_DELETE_CLUSTER=1``.
3. Otherwise every e2e test is skipped, with the reason.

Every test under tests/e2e is marked ``e2e``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

_HERE = Path(__file__).resolve().parent
DEFAULT_CLUSTER = "kms-e2e"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def _run(*argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def _docker_problem() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not on PATH"
    try:
        info = _run("docker", "info", timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` timed out"
    if info.returncode != 0:
        return f"`docker info` failed: {(info.stderr or info.stdout).strip()[-300:]}"
    return None


def _kind_kubeconfig(tmp_dir: Path) -> tuple[Path, str, bool]:
    name = os.environ.get("KMS_E2E_CLUSTER", DEFAULT_CLUSTER)
    clusters = _run("kind", "get", "clusters")
    if clusters.returncode != 0:
        pytest.fail(f"`kind get clusters` failed: {clusters.stderr.strip()}", pytrace=False)
    created = False
    if name not in clusters.stdout.split():
        argv = ["kind", "create", "cluster", "--name", name, "--wait", "180s"]
        if image := os.environ.get("KMS_E2E_KIND_IMAGE"):
            argv += ["--image", image]
        made = _run(*argv, timeout=600)
        if made.returncode != 0:
            pytest.fail(f"`{' '.join(argv)}` failed:\n{made.stderr.strip()}", pytrace=False)
        created = True
    kubeconfig = _run("kind", "get", "kubeconfig", "--name", name)
    if kubeconfig.returncode != 0:
        pytest.fail(f"`kind get kubeconfig` failed: {kubeconfig.stderr.strip()}", pytrace=False)
    path = tmp_dir / f"{name}.kubeconfig"
    path.write_text(kubeconfig.stdout)
    path.chmod(0o600)
    return path, name, created


@pytest.fixture(scope="session")
def e2e_kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The kubeconfig of the e2e cluster (skips when there is no way to get one)."""
    if os.environ.get("KMS_E2E_USE_KUBECONFIG") == "1":
        path = Path(os.environ.get("KUBECONFIG") or Path.home() / ".kube" / "config")
        if not path.is_file():
            pytest.fail(f"KMS_E2E_USE_KUBECONFIG=1 but kubeconfig {path} does not exist")
        yield path
        return
    problem = _docker_problem()
    if problem is None and shutil.which("kind") is None:
        problem = "kind is not on PATH"
    if problem is not None:
        pytest.skip(
            f"no e2e cluster: {problem}; install docker and kind, or set "
            "KMS_E2E_USE_KUBECONFIG=1 to use the cluster of $KUBECONFIG"
        )
    path, name, created = _kind_kubeconfig(tmp_path_factory.mktemp("e2e"))
    yield path
    if created and os.environ.get("KMS_E2E_DELETE_CLUSTER") == "1":
        _run("kind", "delete", "cluster", "--name", name, timeout=300)


@pytest.fixture(scope="session")
def e2e_api(e2e_kubeconfig: Path) -> Iterator[client.ApiClient]:
    """An ``ApiClient`` for the e2e cluster."""
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(e2e_kubeconfig), client_configuration=configuration)
    api = client.ApiClient(configuration)
    try:
        yield api
    finally:
        api.close()

"""Fixtures of the end-to-end tier: a real cluster with a real node, nothing mocked.

Where the cluster comes from:

1. ``KMS_E2E_USE_KUBECONFIG=1``: the cluster of ``$KUBECONFIG`` (or ``~/.kube/config``), as
   is: kind, or any cluster. The image must be there already: ``KMS_E2E_IMAGE`` names it
   (default ``kms-operator:dev``; with kind, ``kind load docker-image kms-operator:dev``) and
   ``KMS_E2E_PULL_POLICY`` its pull policy (default ``IfNotPresent``).
2. Otherwise a :class:`kms_operator.devcluster.cluster.DevCluster` on this machine (root
   needed): the control plane of ``hack/controlplane/ensure.sh``, the node of
   ``hack/node/ensure.sh`` and the image archive of ``hack/image/build.sh``
   (``KMS_E2E_IMAGE_ARCHIVE``, default ``.envtest/image/kms-operator.tar``), loaded into the
   node; pull policy ``Never``, so no registry is ever asked. ``make e2e`` builds all three first.

The tier never skips: a missing piece fails with what to run. kubectl and helm come from
``KUBEBUILDER_ASSETS`` / ``.envtest/bin``, else PATH. Every test under tests/e2e is marked
``e2e``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.kube import ROOT, Kube

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def _diagnostics_of(cluster: Any) -> Callable[[], str]:
    def report() -> str:
        try:
            return str(cluster.logs_report(15))
        except Exception as exc:
            return f"(no node logs: {exc})"

    return report


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """The e2e cluster (see the module docstring for where it comes from)."""
    helm_home = tmp_path_factory.mktemp("helm")
    image = os.environ.get("KMS_E2E_IMAGE", "kms-operator:dev")
    repository, _, tag = image.rpartition(":")
    if os.environ.get("KMS_E2E_USE_KUBECONFIG") == "1":
        path = Path(os.environ.get("KUBECONFIG") or Path.home() / ".kube" / "config")
        if not path.is_file():
            pytest.fail(
                f"KMS_E2E_USE_KUBECONFIG=1 but kubeconfig {path} does not exist", pytrace=False
            )
        yield Kube(
            path, repository, tag, os.environ.get("KMS_E2E_PULL_POLICY", "IfNotPresent"), helm_home
        )
        return
    from kms_operator.devcluster.cluster import DevCluster

    archive = Path(
        os.environ.get("KMS_E2E_IMAGE_ARCHIVE", ROOT / ".envtest" / "image" / "kms-operator.tar")
    )
    if not archive.is_file():
        pytest.fail(
            f"image archive {archive} missing: run `make image` (or make e2e)", pytrace=False
        )
    cluster = DevCluster(images=[archive])
    try:
        cluster.start()
    except Exception as exc:
        pytest.fail(f"the dev cluster did not start: {exc}", pytrace=False)
    print(f"\ndev cluster up in {cluster.timings.get('total')}s: {cluster.timings}")
    try:
        yield Kube(
            cluster.kubeconfig,
            repository,
            tag,
            "Never",
            helm_home,
            diagnostics=_diagnostics_of(cluster),
        )
    finally:
        cluster.stop()

"""Fixtures for integration tests: a real kube-apiserver + etcd
(see :mod:`kms_operator.devcluster.controlplane`).

- ``control_plane`` (session): a started :class:`LocalControlPlane`. It never skips: missing
  binaries or a server that does not start fail the test with the reason. Build the binaries
  with ``hack/controlplane/ensure.sh`` (or point ``KUBEBUILDER_ASSETS`` at them).
- ``kube_api`` (session): a ``kubernetes.client.ApiClient`` for the admin user.
- ``kube_api_factory`` (session): builds an ``ApiClient`` for any bearer token (e.g. a
  ServiceAccount token), trusting the control plane's CA.

Every test under tests/integration is marked ``integration``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from kms_operator.devcluster.controlplane import ControlPlaneError, LocalControlPlane

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[LocalControlPlane]:
    cp = LocalControlPlane()
    try:
        cp.start()
    except ControlPlaneError as exc:
        pytest.fail(f"local control plane unavailable: {exc}", pytrace=False)
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def kube_api(control_plane: LocalControlPlane) -> Iterator[client.ApiClient]:
    configuration = client.Configuration()
    config.load_kube_config(
        config_file=str(control_plane.kubeconfig), client_configuration=configuration
    )
    api = client.ApiClient(configuration)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="session")
def kube_api_factory(
    control_plane: LocalControlPlane,
) -> Iterator[Callable[[str], client.ApiClient]]:
    made: list[client.ApiClient] = []

    def make(token: str) -> client.ApiClient:
        configuration = client.Configuration()
        configuration.host = control_plane.server
        configuration.ssl_ca_cert = str(control_plane.ca_file)
        configuration.api_key = {"authorization": token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        api = client.ApiClient(configuration)
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


@pytest.fixture
def namespace(kube_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace for one test (deleted afterwards; with no namespace controller
    running it stays Terminating, which is harmless)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise

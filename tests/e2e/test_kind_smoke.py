"""Smoke test of the e2e cluster: the API server answers and namespaces can be created."""

from __future__ import annotations

import time
import uuid

import pytest
from kubernetes import client

pytestmark = pytest.mark.e2e


def test_api_server_answers(e2e_api: client.ApiClient) -> None:
    info = client.VersionApi(e2e_api).get_code()
    assert info.git_version.startswith("v1.")


def test_namespace_can_be_created(e2e_api: client.ApiClient) -> None:
    core = client.CoreV1Api(e2e_api)
    name = f"kms-e2e-smoke-{uuid.uuid4().hex[:8]}"
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"kms.cmk.dev/test": "smoke"})
        )
    )
    try:
        got = core.read_namespace(name)
        assert got.metadata.labels["kms.cmk.dev/test"] == "smoke"
        deadline = time.monotonic() + 60
        while got.status.phase != "Active" and time.monotonic() < deadline:
            time.sleep(0.5)
            got = core.read_namespace(name)
        assert got.status.phase == "Active"
    finally:
        core.delete_namespace(name)

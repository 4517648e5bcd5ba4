"""One TLS identity for the API and the webhook (issue 8, item 18), and the webhook
configuration the operator patches but never creates (item 5).

Without ``--tls-dir``, the webhook used to call ``load_or_generate`` a second time: a second CA
(the webhook's caBundle differed from the CA published for the API) and a second temporary
folder holding a private key, left behind on stop. The operator runs here without
``--tls-dir`` and with its own ``TMPDIR``, so every temporary folder it makes is visible.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.integration.operator_fixtures import OPERATOR_NAMESPACE, OperatorProcess, wait_for
from tests.integration.webhooks import (
    ca_bundle,
    chart_webhook_configuration,
    wait_for_webhook,
    webhooks,
)

from kms_operator.devcluster.controlplane import LocalControlPlane


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WithoutTlsDir(OperatorProcess):
    """The operator with a generated certificate in a temporary folder (no ``--tls-dir``);
    the CA clients trust is the one it publishes in its ConfigMap."""

    def __init__(self, plane: LocalControlPlane, work_dir: Path, kube_api: client.ApiClient):
        super().__init__(plane, work_dir, day_seconds=2)
        self.kube_api = kube_api
        self.temp_root = work_dir / "tmp"
        self.temp_root.mkdir()
        self.configmap = f"kms-ca-{uuid.uuid4().hex[:8]}"

    @property
    def ca_file(self) -> Path:
        return self.work_dir / "published-ca.crt"

    def argv(self) -> list[str]:
        args = super().argv()
        at = args.index("--tls-dir")
        del args[at : at + 2]
        return [
            *args,
            "--ca-configmap", self.configmap,
            "--webhook", "--webhook-host", "127.0.0.1", "--webhook-port", str(_free_port()),
        ]  # fmt: skip

    def start(self) -> None:
        with mock.patch.dict(os.environ, {"TMPDIR": str(self.temp_root)}):
            super().start()

    def published_ca(self) -> bytes | None:
        try:
            found = client.CoreV1Api(self.kube_api).read_namespaced_config_map(
                self.configmap, OPERATOR_NAMESPACE
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return str(found.data["ca.crt"]).encode()

    def _ready(self) -> bool:
        ca = self.published_ca()
        if ca is None:
            return False
        self.ca_file.write_bytes(ca)
        return super()._ready()

    def tls_folders(self) -> list[Path]:
        return sorted(self.temp_root.glob("kms-operator-tls-*"))


@pytest.fixture
def operator(
    control_plane: LocalControlPlane,
    crds_installed: list[str],
    kube_api: client.ApiClient,
    tmp_path: Path,
) -> Iterator[WithoutTlsDir]:
    with chart_webhook_configuration(kube_api):
        process = WithoutTlsDir(control_plane, tmp_path, kube_api)
        try:
            process.start()
            yield process
        finally:
            process.stop()
            process.kill()


def test_api_and_webhook_share_one_generated_identity_removed_on_stop(
    operator: WithoutTlsDir, kube_api: client.ApiClient
) -> None:
    entry = wait_for_webhook(kube_api)
    published = operator.published_ca()
    # One CA: the webhook's caBundle is the CA published for the API (and /readyz answered
    # over TLS verified by that CA: the API serves under it).
    assert published is not None and ca_bundle(entry) == published
    (folder,) = operator.tls_folders()  # one temporary folder, not two
    assert {p.name for p in folder.iterdir()} == {"ca.crt", "tls.crt", "tls.key"}

    operator.stop()
    assert operator.tls_folders() == []  # no private key left behind
    # The stopped operator took its webhook out of the configuration (patch; never delete).
    wait_for(lambda: webhooks(kube_api) == [], what="the webhook removed on stop")

"""Building an API client: an explicit kubeconfig, the in-cluster ServiceAccount, or the default."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client, config


def load_api_client(kubeconfig: Path | None = None) -> client.ApiClient:
    if os.environ.get("KUBERNETES_SERVICE_HOST") and kubeconfig is None:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig) if kubeconfig else None
    )
    return api


@dataclass(frozen=True)
class ConnectionParameters:
    """How to reach the API server, for Kopf's own login (same cluster, same identity)."""

    server: str
    ca_path: str | None
    insecure: bool
    scheme: str | None
    token: str | None = field(repr=False)
    certificate_path: str | None
    private_key_path: str | None


def connection_parameters(api_client: client.ApiClient) -> ConnectionParameters:
    configuration = api_client.configuration
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    scheme, _, token = (header or "").rpartition(" ")
    return ConnectionParameters(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme or ("Bearer" if token else None),
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )

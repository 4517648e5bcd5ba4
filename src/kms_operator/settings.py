"""Settings of ``kms-operator run``, shared by the operator, the API and the CLI.

Each field has a command-line flag and an environment fallback (``KMS_<FIELD>``); see
:mod:`kms_operator.cli.operator_cli`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    store_path: Path = Path("/var/lib/kms-operator/store.db")
    root_key_file: Path = Path("/etc/kms-operator/root-key/root.key")
    #: Namespaces to watch; empty means every namespace (cluster-wide).
    namespaces: tuple[str, ...] = ()
    day_seconds: float = 86400.0
    log_format: str = "text"  # text | json
    log_level: str = "INFO"
    #: The namespace the operator runs in (its ConfigMap with the API's CA lands there).
    operator_namespace: str = "kms-system"
    kubeconfig: Path | None = None

    # Data-plane API (DESIGN.md section 6).
    api_enabled: bool = True
    api_host: str = "0.0.0.0"  # noqa: S104 - a Service fronts it in the cluster
    api_port: int = 8443
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: Where the generated self-signed certificate and key go when none are given.
    tls_dir: Path | None = None
    #: Given with ``tls_cert_file``: the CA bundle clients should trust (published as
    #: ``ApiServer.ca_pem``); default: the certificate file itself.
    tls_ca_file: Path | None = None
    ca_configmap: str = "kms-operator-ca"
    #: The Service in ``operator_namespace`` that fronts the API: its DNS names go into the
    #: generated serving certificate.
    api_service_name: str = "kms-operator"
    token_audiences: tuple[str, ...] = ()
    static_token_file: Path | None = None
    auth_cache_seconds: float = 10.0
    audit_log: str = "-"  # a file path, or "-" for stdout

    # Admission webhook (Kopf's), optional.
    webhook_enabled: bool = False
    webhook_port: int = 9443
    #: The host name the API server calls the webhook at (its certificate must cover it);
    #: default ``<api_service_name>.<operator_namespace>.svc``.
    webhook_host: str | None = None

    # Kopf tuning (DESIGN.md section 7).
    #: Objects handled at once (Kopf's worker limit).
    max_workers: int = 100
    watch_server_timeout: int = 300
    watch_client_timeout: int = 330

"""Settings of ``kms-operator run``, shared by the operator, the API and the CLI.

Each field has a command-line flag and an environment fallback (``KMS_<FIELD>``), except
``static_token_file``, which only the flag sets; see :mod:`kms_operator.cli.operator_cli`.
Values that would make the process misbehave (a day of zero seconds, no token audience) are
refused here with a ``ValueError`` naming the field, whoever builds the settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from kms_operator.contract import TOKEN_AUDIENCE

#: The audience of the KMS's ServiceAccount tokens (DESIGN.md section 6): a token made for the
#: Kubernetes API server (or anything else) is refused.
DEFAULT_TOKEN_AUDIENCE = TOKEN_AUDIENCE


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
    #: Audiences a caller's token must have (TokenReview's ``status.audiences`` must name one).
    token_audiences: tuple[str, ...] = (DEFAULT_TOKEN_AUDIENCE,)
    static_token_file: Path | None = None
    auth_cache_seconds: float = 10.0
    audit_log: str = "-"  # a file path, or "-" for stdout
    #: A request (TLS handshake, head, then body) must arrive whole within this many seconds,
    #: and a connection idle for as long is closed.
    request_timeout_seconds: float = 10.0
    #: The account of the ARNs of the AWS protocol (DESIGN.md 6a): twelve digits.
    aws_account_id: str = "000000000000"

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

    def __post_init__(self) -> None:
        _positive("day_seconds", self.day_seconds)
        _positive("request_timeout_seconds", self.request_timeout_seconds)
        if not (math.isfinite(self.auth_cache_seconds) and self.auth_cache_seconds >= 0):
            raise ValueError(
                f"auth_cache_seconds must be zero or more seconds, got {self.auth_cache_seconds}"
            )
        if not self.token_audiences or not all(a.strip() for a in self.token_audiences):
            raise ValueError(
                "token_audiences must name at least one non-empty audience "
                f"(default {DEFAULT_TOKEN_AUDIENCE!r})"
            )
        if not (
            len(self.aws_account_id) == 12
            and self.aws_account_id.isascii()
            and self.aws_account_id.isdigit()
        ):
            raise ValueError(f"aws_account_id must be twelve digits, got {self.aws_account_id!r}")


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds, got {value}")

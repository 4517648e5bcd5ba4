"""The local control plane's credentials: a throw-away CA, the API server's serving certificate,
an admin client certificate, the service-account signing keys, and the admin kubeconfig.

Certificates come from :mod:`kms_operator.pki`; they live a week, and none of them is key
material of the KMS.
"""

from __future__ import annotations

import base64
import datetime
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from kms_operator import pki

__all__ = ["ADMIN_USER", "CLUSTER_NAME", "ControlPlaneCredentials", "write_admin_kubeconfig"]

ADMIN_USER = "kms-admin"
CLUSTER_NAME = "kms-local"


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


class ControlPlaneCredentials:
    """The files of ``directory``: ``ca.crt``, ``apiserver.{crt,key}``, ``admin.{crt,key}``
    (user ``kms-admin`` in group ``system:masters``) and ``sa.{key,pub}``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        not_before = now - datetime.timedelta(minutes=5)
        not_after = now + datetime.timedelta(days=7)

        ca_key, ca_cert = pki.new_ca("kms-local-control-plane-ca", not_before, not_after)
        serving_key, serving_cert = pki.issue(
            ca_key,
            ca_cert,
            pki.name("kube-apiserver"),
            ExtendedKeyUsageOID.SERVER_AUTH,
            not_before=not_before,
            not_after=not_after,
            sans=pki.subject_alternative_names(
                ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
                ["127.0.0.1", "10.0.0.1"],
            ),
        )
        admin_key, admin_cert = pki.issue(
            ca_key,
            ca_cert,
            pki.name(ADMIN_USER, organization="system:masters"),
            ExtendedKeyUsageOID.CLIENT_AUTH,
            not_before=not_before,
            not_after=not_after,
        )
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

        self.ca_cert_pem = pki.cert_pem(ca_cert)
        self.admin_cert_pem = pki.cert_pem(admin_cert)
        self.admin_key_pem = pki.key_pem(admin_key)
        self.ca_file = _write(directory / "ca.crt", self.ca_cert_pem)
        self.serving_cert_file = _write(directory / "apiserver.crt", pki.cert_pem(serving_cert))
        self.serving_key_file = _write(directory / "apiserver.key", pki.key_pem(serving_key), True)
        self.admin_cert_file = _write(directory / "admin.crt", self.admin_cert_pem)
        self.admin_key_file = _write(directory / "admin.key", self.admin_key_pem, True)
        self.sa_key_file = _write(directory / "sa.key", pki.key_pem(sa_key), True)
        self.sa_pub_file = _write(
            directory / "sa.pub",
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )


def write_admin_kubeconfig(path: Path, server: str, credentials: ControlPlaneCredentials) -> Path:
    """A kubeconfig (mode 0600) for the admin user, certificate data embedded."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": b64(credentials.ca_cert_pem),
                },
            }
        ],
        "users": [
            {
                "name": ADMIN_USER,
                "user": {
                    "client-certificate-data": b64(credentials.admin_cert_pem),
                    "client-key-data": b64(credentials.admin_key_pem),
                },
            }
        ],
        "contexts": [
            {
                "name": CLUSTER_NAME,
                "context": {"cluster": CLUSTER_NAME, "user": ADMIN_USER, "namespace": "default"},
            }
        ],
        "current-context": CLUSTER_NAME,
        "preferences": {},
    }
    return _write(path, yaml.safe_dump(config, sort_keys=False).encode(), private=True)

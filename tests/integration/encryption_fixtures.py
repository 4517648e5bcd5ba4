"""kube-apiserver with encryption at rest, and etcd read behind its back.

- :func:`write_encryption_config` writes an ``EncryptionConfiguration`` for Secrets from
  providers (:func:`aescbc_provider`, :func:`kms_v2_provider`, :data:`IDENTITY_PROVIDER`);
  :func:`encrypted_control_plane` is a :class:`LocalControlPlane` started with it
  (``--encryption-provider-config``). The file is read again on
  :meth:`LocalControlPlane.restart_apiserver`, so a test may rewrite it before a restart.
- :func:`etcd_value` (:func:`etcd_values` under a prefix) is a key's raw value straight from
  etcd (etcdctl ``get -w json``: keys and values come base64-encoded, so binary values
  survive); :func:`secret_key` names a Secret's.
- :func:`stored_encrypted_object` reads a kms v2 value: the ``k8s:enc:kms:v2:<name>:`` prefix,
  then an ``EncryptedObject`` (:mod:`tests.support.encrypted_object`).
- :func:`apiserver_health` is a ``/healthz/<check>`` answer, :func:`admin_client` a Kubernetes
  client of one control plane.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from tests.support.encrypted_object import EncryptedObject, parse_encrypted_object

from kms_operator.devcluster.controlplane import LocalControlPlane
from kms_operator.devcluster.processes import http_get

__all__ = [
    "IDENTITY_PROVIDER",
    "admin_client",
    "aescbc_provider",
    "apiserver_health",
    "encrypted_control_plane",
    "etcd_value",
    "etcd_values",
    "kms_v2_provider",
    "secret_key",
    "stored_encrypted_object",
    "write_encryption_config",
]

IDENTITY_PROVIDER: dict[str, Any] = {"identity": {}}


def aescbc_provider(name: str, key: bytes) -> dict[str, Any]:
    return {"aescbc": {"keys": [{"name": name, "secret": base64.b64encode(key).decode()}]}}


def kms_v2_provider(name: str, socket: Path, timeout: str = "3s") -> dict[str, Any]:
    return {
        "kms": {
            "apiVersion": "v2",
            "name": name,
            "endpoint": f"unix://{socket}",
            "timeout": timeout,
        }
    }


def write_encryption_config(path: Path, providers: list[dict[str, Any]]) -> Path:
    """An EncryptionConfiguration encrypting Secrets with ``providers`` (the first writes)."""
    document = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [{"resources": ["secrets"], "providers": providers}],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def encrypted_control_plane(
    encryption_config: Path, *, extra_apiserver_args: list[str] | None = None
) -> Iterator[LocalControlPlane]:
    plane = LocalControlPlane(
        extra_apiserver_args=[
            f"--encryption-provider-config={encryption_config}",
            *(extra_apiserver_args or []),
        ]
    )
    with plane:
        yield plane


@contextlib.contextmanager
def admin_client(plane: LocalControlPlane) -> Iterator[client.ApiClient]:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(plane.kubeconfig), client_configuration=configuration)
    api = client.ApiClient(configuration)
    try:
        yield api
    finally:
        api.close()


def secret_key(namespace: str, name: str) -> str:
    return f"/registry/secrets/{namespace}/{name}"


def _etcdctl_get(plane: LocalControlPlane, key: str, *flags: str) -> dict[str, bytes]:
    proc = subprocess.run(
        [
            str(plane.etcdctl_path),
            f"--endpoints={plane.etcd_url}",
            "get",
            key,
            *flags,
            "-w",
            "json",
        ],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    if proc.returncode != 0:
        raise AssertionError(f"etcdctl get {key} failed: {proc.stderr.decode(errors='replace')}")
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"])
        for kv in json.loads(proc.stdout).get("kvs", [])
    }


def etcd_value(plane: LocalControlPlane, key: str) -> bytes | None:
    """The raw value of ``key`` in the control plane's etcd, None when there is none."""
    return _etcdctl_get(plane, key).get(key)


def etcd_values(plane: LocalControlPlane, prefix: str) -> dict[str, bytes]:
    """Every key under ``prefix`` and its raw value."""
    return _etcdctl_get(plane, prefix, "--prefix")


def apiserver_health(plane: LocalControlPlane, check: str = "") -> tuple[int, str]:
    """Status and body of ``/healthz[/<check>]?verbose`` as the admin user."""
    context = ssl.create_default_context(cafile=str(plane.ca_file))
    context.load_cert_chain(str(plane.client_cert_file), str(plane.client_key_file))
    path = f"/healthz/{check}" if check else "/healthz"
    status, body = http_get(f"{plane.server}{path}?verbose", context)
    return status, body.decode(errors="replace")


def stored_encrypted_object(raw: bytes, provider_name: str) -> EncryptedObject:
    """The EncryptedObject of a value that kms v2 provider ``provider_name`` wrote."""
    prefix = f"k8s:enc:kms:v2:{provider_name}:".encode()
    if not raw.startswith(prefix):
        raise AssertionError(f"not written by kms v2 provider {provider_name}: {raw[:40]!r}")
    return parse_encrypted_object(raw[len(prefix) :])

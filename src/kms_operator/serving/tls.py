"""The serving certificate: the one given (``tls_cert_file``/``tls_key_file``) or a self-signed one.

When none is given, a fresh CA signs a serving certificate for ``localhost``, ``127.0.0.1``,
``::1`` and the Service's names (``<svc>``, ``<svc>.<ns>``, ``<svc>.<ns>.svc``,
``<svc>.<ns>.svc.cluster.local``). The CA's private key is never written: nobody, not even the
operator, can mint another certificate under it. The files go to ``settings.tls_dir`` (reused
on restart while they cover the same names and are valid for more than 30 days, so clients
keep trusting the same CA) or to a temporary directory removed on stop.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from kms_operator import pki
from kms_operator.settings import Settings

log = logging.getLogger(__name__)

CA_FILE = "ca.crt"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
VALIDITY = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class ServingTls:
    context: ssl.SSLContext
    ca_pem: bytes
    #: True when the certificate was generated here (so its CA should be published).
    generated: bool
    cert_file: Path
    key_file: Path
    #: A temporary directory holding the generated files, to remove on stop.
    temp_dir: Path | None = None

    def cleanup(self) -> None:
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def serving_names(settings: Settings) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses the generated certificate covers."""
    svc, ns = settings.api_service_name, settings.operator_namespace
    dns = ["localhost", svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local"]
    ips = ["127.0.0.1", "::1"]
    try:
        host = ipaddress.ip_address(settings.api_host)
    except ValueError:
        if settings.api_host and settings.api_host not in dns:
            dns.append(settings.api_host)
    else:
        if not host.is_unspecified and str(host) not in ips:
            ips.append(str(host))
    return dns, ips


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    return context


def load_or_generate(settings: Settings, now: datetime.datetime | None = None) -> ServingTls:
    if settings.tls_cert_file is not None:
        if settings.tls_key_file is None:
            raise ValueError("tls_key_file is required with tls_cert_file")
        ca_source = settings.tls_ca_file or settings.tls_cert_file
        return ServingTls(
            server_context(settings.tls_cert_file, settings.tls_key_file),
            ca_source.read_bytes(),
            generated=False,
            cert_file=settings.tls_cert_file,
            key_file=settings.tls_key_file,
        )
    dns, ips = serving_names(settings)
    now = now or datetime.datetime.now(datetime.UTC)
    temp_dir: Path | None = None
    if settings.tls_dir is None:
        temp_dir = Path(tempfile.mkdtemp(prefix="kms-operator-tls-"))
        directory = temp_dir
    else:
        directory = settings.tls_dir
        directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = directory / CA_FILE, directory / CERT_FILE, directory / KEY_FILE
    if not _reusable(
        ca_path=ca_path, cert_path=cert_path, key_path=key_path, dns=dns, ips=ips, now=now
    ):
        ca_pem, cert_pem, key_pem = generate_self_signed(dns, ips, now)
        _write(key_path, key_pem, 0o600)
        _write(cert_path, cert_pem, 0o644)
        _write(ca_path, ca_pem, 0o644)
        log.info("generated a self-signed serving certificate in %s for %s", directory, dns + ips)
    else:
        log.info("reusing the serving certificate in %s", directory)
    return ServingTls(
        server_context(cert_path, key_path),
        ca_path.read_bytes(),
        generated=True,
        cert_file=cert_path,
        key_file=key_path,
        temp_dir=temp_dir,
    )


def generate_self_signed(
    dns: list[str], ips: list[str], now: datetime.datetime
) -> tuple[bytes, bytes, bytes]:
    """A CA certificate, a serving certificate it signs, and the serving key (PEM each).

    The CA's private key is never written: nothing else can be signed under it.
    """
    not_before, not_after = now - datetime.timedelta(minutes=5), now + VALIDITY
    ca_key, ca_cert = pki.new_ca("kms-operator API CA", not_before, not_after)
    key, cert = pki.issue(
        ca_key,
        ca_cert,
        pki.name("kms-operator API"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        not_before=not_before,
        not_after=not_after,
        sans=pki.subject_alternative_names(dns, ips),
    )
    return pki.cert_pem(ca_cert), pki.cert_pem(cert), pki.key_pem(key)


def _reusable(
    *,
    ca_path: Path,
    cert_path: Path,
    key_path: Path,
    dns: list[str],
    ips: list[str],
    now: datetime.datetime,
) -> bool:
    if not (ca_path.is_file() and cert_path.is_file() and key_path.is_file()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    covered = set(sans.get_values_for_type(x509.DNSName)) >= set(dns) and {
        str(ip) for ip in sans.get_values_for_type(x509.IPAddress)
    } >= {str(ipaddress.ip_address(ip)) for ip in ips}
    return covered and cert.not_valid_after_utc - RENEW_BEFORE > now


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)

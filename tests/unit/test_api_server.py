"""``start_api_server`` for real: TLS with a generated CA, static tokens, the audit file,
readiness, the CA ConfigMap hand-off, and the serving certificate's names and reuse."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from kms_operator import api as native_api
from kms_operator.keys.service import KeyService
from kms_operator.serving import server as server_module
from kms_operator.serving import tls
from kms_operator.serving.audit import AuditRecord, FileAuditSink
from kms_operator.settings import Settings

pytestmark = pytest.mark.unit

TOKEN = "dev-token-abcdef"


def _settings(tmp_path: Path, **changes: Any) -> Settings:
    tokens = tmp_path / "tokens.csv"
    tokens.write_text(f"{TOKEN},dev,devs\n")
    values: dict[str, Any] = {
        "api_host": "127.0.0.1",
        "api_port": 0,
        "static_token_file": tokens,
        "audit_log": str(tmp_path / "audit" / "audit.log"),
        "tls_dir": tmp_path / "tls",
        "operator_namespace": "kms-test",
        "api_service_name": "kms-api",
    }
    values.update(changes)
    return Settings(**values)


async def test_serves_over_tls_with_static_tokens_and_audits_to_a_file(
    service: KeyService, tmp_path: Path
) -> None:
    service.create_key("dev", "k1")
    settings = _settings(tmp_path)
    api = await server_module.start_api_server(
        service, settings, None, front_ends=(native_api.add_routes,)
    )
    try:
        assert api.url.startswith("https://127.0.0.1:") and not api.url.endswith(":0")
        context = ssl.create_default_context(cadata=api.ca_pem.decode())
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{api.url}/readyz", ssl=context) as response:
                assert response.status == 503
            api.mark_ready()
            async with session.get(f"{api.url}/readyz", ssl=context) as response:
                assert response.status == 200
            async with session.post(
                f"{api.url}/v1/namespaces/dev/keys/k1/encrypt",
                json={"plaintext": base64.b64encode(b"hi").decode()},
                headers=headers,
                ssl=context,
            ) as response:
                assert response.status == 200
                blob = (await response.json())["ciphertextBlob"]
            async with session.post(
                f"{api.url}/v1/decrypt", json={"ciphertextBlob": blob}, headers=headers, ssl=context
            ) as response:
                assert response.status == 200
                assert (await response.json())["plaintext"] == base64.b64encode(b"hi").decode()
            # Plain HTTP is not served.
            with pytest.raises(aiohttp.ClientError):
                async with session.get(api.url.replace("https", "http") + "/healthz") as response:
                    await response.read()
        lines = [json.loads(x) for x in Path(settings.audit_log).read_text().splitlines()]
        assert [(x["operation"], x["caller"], x["outcome"]) for x in lines] == [
            ("encrypt", "dev", "allowed"),
            ("decrypt", "dev", "allowed"),
        ]
        assert lines[0]["remoteAddress"] == "127.0.0.1"
    finally:
        await api.stop()
    assert not api.ready


async def test_generated_ca_is_published_when_a_client_is_given(
    service: KeyService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[tuple[object, str, str, bytes]] = []
    monkeypatch.setattr(
        server_module.reviews,
        "publish_ca",
        lambda api, ns, name, pem: published.append((api, ns, name, pem)),
    )
    fake_client = object()
    api = await server_module.start_api_server(
        service,
        _settings(tmp_path, ca_configmap="the-ca"),
        fake_client,  # type: ignore[arg-type]
        front_ends=(native_api.add_routes,),
    )
    await api.stop()
    assert published == [(fake_client, "kms-test", "the-ca", api.ca_pem)]


def test_token_review_mode_needs_a_client(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="static_token_file"):
        server_module.build_auth(_settings(tmp_path, static_token_file=None), None)


def test_generated_certificate_names_and_reuse(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = tls.load_or_generate(settings)
    cert = x509.load_pem_x509_certificate(first.cert_file.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) >= {
        "localhost", "kms-api", "kms-api.kms-test", "kms-api.kms-test.svc",
        "kms-api.kms-test.svc.cluster.local",
    }  # fmt: skip
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "::1"}
    ca = x509.load_pem_x509_certificate(first.ca_pem)
    cert.verify_directly_issued_by(ca)
    assert first.generated and first.temp_dir is None
    assert (first.key_file.stat().st_mode & 0o777) == 0o600
    assert not list(settings.tls_dir.glob("*ca*.key"))  # type: ignore[union-attr]
    # Restart: same CA while the certificate covers the names and is far from expiry.
    again = tls.load_or_generate(settings)
    assert again.ca_pem == first.ca_pem
    # Other names, or near expiry: a new CA.
    renamed = tls.load_or_generate(_settings(tmp_path, api_service_name="other"))
    assert renamed.ca_pem != first.ca_pem
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=340)
    assert tls.load_or_generate(_settings(tmp_path, api_service_name="other"), later).ca_pem != (
        renamed.ca_pem
    )


def test_temp_dir_when_no_tls_dir_is_removed_on_cleanup(tmp_path: Path) -> None:
    serving = tls.load_or_generate(_settings(tmp_path, tls_dir=None))
    assert serving.temp_dir is not None and serving.cert_file.exists()
    serving.cleanup()
    assert not serving.temp_dir.exists()


def test_given_certificate_is_used_and_its_ca_published(tmp_path: Path) -> None:
    ca_pem, cert_pem, key_pem = tls.generate_self_signed(
        ["localhost"], ["127.0.0.1"], datetime.datetime.now(datetime.UTC)
    )
    for name, data in (("ca.pem", ca_pem), ("cert.pem", cert_pem), ("key.pem", key_pem)):
        (tmp_path / name).write_bytes(data)
    given = tls.load_or_generate(
        _settings(tmp_path, tls_cert_file=tmp_path / "cert.pem", tls_key_file=tmp_path / "key.pem")
    )
    assert not given.generated and given.ca_pem == cert_pem
    with_ca = tls.load_or_generate(
        _settings(
            tmp_path,
            tls_cert_file=tmp_path / "cert.pem",
            tls_key_file=tmp_path / "key.pem",
            tls_ca_file=tmp_path / "ca.pem",
        )
    )
    assert with_ca.ca_pem == ca_pem
    with pytest.raises(ValueError, match="tls_key_file"):
        tls.load_or_generate(_settings(tmp_path, tls_cert_file=tmp_path / "cert.pem"))


def test_file_audit_sink_appends_and_fails_loudly_when_closed(tmp_path: Path) -> None:
    path = tmp_path / "a" / "audit.log"
    path.parent.mkdir()
    path.write_text('{"earlier": true}\n')
    sink = FileAuditSink(path)
    sink.write(AuditRecord("random", "r1", caller="dev", outcome="allowed"))
    sink.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["operation"] == "random"
    with pytest.raises(OSError, match="closed"):
        sink.write(AuditRecord("random", "r2"))


# -- slow clients (issue 8, item 7): every stage of a connection has a time limit -------------

#: Generous: the server's limit in these tests is 2 s; this only stops a hung test.
DEADLINE = 60.0


def _address(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("https://").rpartition(":")
    return host, int(port)


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    try:
        while chunk := await reader.read(65536):
            received += chunk
    except (ConnectionError, ssl.SSLError):
        pass
    return received


async def test_half_sent_requests_are_all_closed_by_the_server(
    service: KeyService, tmp_path: Path
) -> None:
    api = await server_module.start_api_server(
        service,
        _settings(tmp_path, request_timeout_seconds=2.0),
        None,
        front_ends=(native_api.add_routes,),
    )
    writers: list[asyncio.StreamWriter] = []
    try:
        host, port = _address(api.url)
        context = ssl.create_default_context(cadata=api.ca_pem.decode())
        readers: list[asyncio.StreamReader] = []
        for _ in range(8):  # 200 connections, 25 handshakes at a time
            opened = await asyncio.gather(
                *(asyncio.open_connection(host, port, ssl=context) for _ in range(25))
            )
            for reader, writer in opened:
                # The head of a request that never ends (no blank line).
                writer.write(b"POST /v1/decrypt HTTP/1.1\r\nHost: kms\r\nContent-Length: 10\r\n")
                readers.append(reader)
                writers.append(writer)
        assert len(readers) == 200
        received = await asyncio.wait_for(
            asyncio.gather(*(_until_closed(r) for r in readers)), DEADLINE
        )
        assert all(not data.startswith(b"HTTP/1.1 200") for data in received)
        # The server still serves.
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{api.url}/healthz", ssl=context) as response,
        ):
            assert response.status == 200
    finally:
        for writer in writers:
            writer.close()
        await api.stop()


async def test_a_stalled_handshake_a_slow_body_and_an_idle_connection_are_closed(
    service: KeyService, tmp_path: Path
) -> None:
    api = await server_module.start_api_server(
        service,
        _settings(tmp_path, request_timeout_seconds=2.0),
        None,
        front_ends=(native_api.add_routes,),
    )
    writers: list[asyncio.StreamWriter] = []
    try:
        host, port = _address(api.url)
        context = ssl.create_default_context(cadata=api.ca_pem.decode())
        # TCP without a TLS ClientHello.
        silent, silent_writer = await asyncio.open_connection(host, port)
        writers.append(silent_writer)
        # A whole head, then a body that stops after 10 of its 100 bytes.
        slow, slow_writer = await asyncio.open_connection(host, port, ssl=context)
        writers.append(slow_writer)
        slow_writer.write(
            b"POST /v1/random HTTP/1.1\r\nHost: kms\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 100\r\n\r\n"
            b'{"numberOf'
        )
        # A complete request on a keep-alive connection, then nothing.
        idle, idle_writer = await asyncio.open_connection(host, port, ssl=context)
        writers.append(idle_writer)
        idle_writer.write(b"GET /healthz HTTP/1.1\r\nHost: kms\r\n\r\n")
        silent_data, slow_data, idle_data = await asyncio.wait_for(
            asyncio.gather(_until_closed(silent), _until_closed(slow), _until_closed(idle)),
            DEADLINE,
        )
        assert silent_data == b""
        assert slow_data.startswith(b"HTTP/1.1 408 "), slow_data[:200]
        assert b"Connection: close" in slow_data and b'"code":"InvalidRequest"' in slow_data
        assert idle_data.startswith(b"HTTP/1.1 200 ") and idle_data.count(b"HTTP/1.1") == 1
    finally:
        for writer in writers:
            writer.close()
        await api.stop()
    lines = [json.loads(x) for x in Path(_settings(tmp_path).audit_log).read_text().splitlines()]
    assert [(x["operation"], x["errorCode"]) for x in lines] == [("random", "InvalidRequest")]


async def test_readiness_checks_of_other_components_show_in_readyz(
    service: KeyService, tmp_path: Path
) -> None:
    health: dict[str, str | None] = {"scheduler": None, "other": None}
    api = await server_module.start_api_server(
        service,
        _settings(tmp_path),
        None,
        front_ends=(native_api.add_routes,),
        readiness_checks=[lambda: health["scheduler"], lambda: health["other"]],
    )
    try:
        api.mark_ready()
        context = ssl.create_default_context(cadata=api.ca_pem.decode())
        async with aiohttp.ClientSession() as session:

            async def readyz() -> tuple[int, dict[str, Any]]:
                async with session.get(f"{api.url}/readyz", ssl=context) as response:
                    return response.status, await response.json()

            assert await readyz() == (200, {"status": "ready"})
            health["scheduler"] = "deadline scheduler: the store failed (retrying in 4 s)"
            assert await readyz() == (
                503,
                {
                    "status": "not ready",
                    "problems": ["deadline scheduler: the store failed (retrying in 4 s)"],
                },
            )
            health["scheduler"] = None
            assert await readyz() == (200, {"status": "ready"})
    finally:
        await api.stop()

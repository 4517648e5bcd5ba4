"""``kmsctl`` against a real API server (TLS, static tokens) started in the test's loop.

The CLI is synchronous, so it runs in a thread while the server serves in the loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kms_operator import api as native_api
from kms_operator.cli import connection
from kms_operator.cli.kmsctl import main
from kms_operator.errors import InvalidCiphertext
from kms_operator.keys.service import KeyService
from kms_operator.serving.server import ApiServer, start_api_server
from kms_operator.settings import Settings

pytestmark = pytest.mark.unit

TOKEN = "kmsctl-dev-token"


@dataclass
class Cli:
    api: ApiServer
    service: KeyService
    ca_file: Path
    token_file: Path
    tmp: Path

    async def run(
        self, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None, auth: bool = True
    ) -> Result:
        argv = list(args)
        if auth:
            argv += ["--server", self.api.url, "--ca-file", str(self.ca_file)]
            argv += ["--token-file", str(self.token_file)]
        runner = CliRunner()
        return await asyncio.to_thread(runner.invoke, main, argv, input=stdin, env=env)


@pytest.fixture
async def cli(service: KeyService, tmp_path: Path) -> AsyncIterator[Cli]:
    tokens = tmp_path / "tokens.csv"
    tokens.write_text(f"{TOKEN},dev\n")
    settings = Settings(
        api_host="127.0.0.1",
        api_port=0,
        static_token_file=tokens,
        audit_log=str(tmp_path / "audit.log"),
        tls_dir=tmp_path / "tls",
    )
    service.create_key("dev", "k1", aliases=("alias/app/db",))
    service.create_key("prod", "k2")
    api = await start_api_server(service, settings, None, front_ends=(native_api.add_routes,))
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(api.ca_pem)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    try:
        yield Cli(api, service, ca_file, token_file, tmp_path)
    finally:
        await api.stop()


BINARY = bytes(range(256)) * 3


async def test_encrypt_decrypt_binary_round_trip(cli: Cli) -> None:
    sealed = await cli.run("encrypt", "-n", "dev", "--key", "k1", stdin=BINARY)
    assert sealed.exit_code == 0, sealed.output
    blob = sealed.stdout_bytes
    assert blob.startswith(b"KMS1")
    opened = await cli.run("decrypt", stdin=blob)
    assert opened.exit_code == 0, opened.output
    assert opened.stdout_bytes == BINARY


async def test_base64_files_alias_and_context(cli: Cli) -> None:
    plain = cli.tmp / "plain.bin"
    plain.write_bytes(b"\x00secret\xff")
    out = cli.tmp / "blob.b64"
    sealed = await cli.run(
        "encrypt", "-n", "dev", "--key", "alias/app/db", "--plaintext-file", str(plain),
        "--context", "app=db", "--context", "tier=gold", "--base64", "-o", str(out),
    )  # fmt: skip
    assert sealed.exit_code == 0, sealed.output
    assert sealed.stdout_bytes == b""
    opened = await cli.run(
        "decrypt", "--ciphertext-file", str(out), "--input-base64",
        "--context", "tier=gold", "--context", "app=db", "--base64",
    )  # fmt: skip
    assert opened.exit_code == 0, opened.output
    assert base64.b64decode(opened.stdout_bytes) == b"\x00secret\xff"
    wrong = await cli.run(
        "decrypt", "--ciphertext-file", str(out), "--input-base64", "--context", "app=other"
    )
    assert wrong.exit_code == 1
    assert wrong.stderr == f"error: InvalidCiphertext: {InvalidCiphertext.MESSAGE}\n"


async def test_generate_data_key_and_re_encrypt(cli: Cli) -> None:
    result = await cli.run(
        "generate-data-key", "-n", "dev", "--key", "k1", "--key-spec", "AES_128",
        "--ciphertext-output", str(cli.tmp / "dk.blob"),
        "--plaintext-output", str(cli.tmp / "dk.key"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert set(answer) == {"keyId", "keyVersion"}
    data_key = (cli.tmp / "dk.key").read_bytes()
    assert len(data_key) == 16
    assert (cli.tmp / "dk.key").stat().st_mode & 0o077 == 0
    moved = await cli.run(
        "re-encrypt", "-n", "prod", "--key", "k2", "--ciphertext-file", str(cli.tmp / "dk.blob"),
        "--context", "moved=yes",
    )  # fmt: skip
    assert moved.exit_code == 0, moved.output
    opened = await cli.run("decrypt", "--context", "moved=yes", stdin=moved.stdout_bytes)
    assert opened.exit_code == 0 and opened.stdout_bytes == data_key
    printed = await cli.run("generate-data-key", "-n", "dev", "--key", "k1")
    assert len(base64.b64decode(json.loads(printed.stdout)["plaintext"])) == 32


async def test_random_and_describe_key(cli: Cli) -> None:
    result = await cli.run("random", "--number-of-bytes", "24")
    assert result.exit_code == 0 and len(result.stdout_bytes) == 24
    described = await cli.run("describe-key", "-n", "dev", "--key", "alias/app/db")
    assert described.exit_code == 0, described.output
    assert json.loads(described.stdout)["name"] == "k1"


async def test_errors_are_printed_as_code_and_message(cli: Cli) -> None:
    missing = await cli.run("encrypt", "-n", "dev", "--key", "nope", stdin=b"x")
    assert missing.exit_code == 1
    assert missing.stderr.startswith("error: NotFound: ") and missing.stdout_bytes == b""
    cli.token_file.write_text("wrong-token")
    refused = await cli.run("encrypt", "-n", "dev", "--key", "k1", stdin=b"x")
    assert refused.exit_code == 1 and refused.stderr.startswith("error: Unauthenticated: ")
    big = await cli.run("encrypt", "-n", "dev", "--key", "k1", stdin=bytes(5000))
    assert big.exit_code == 1


async def test_configuration_from_the_environment_and_its_errors(cli: Cli) -> None:
    env = {
        "KMS_SERVER": cli.api.url,
        "KMS_CA_FILE": str(cli.ca_file),
        "KMS_TOKEN": TOKEN,
        "KMS_NAMESPACE": "dev",
    }
    sealed = await cli.run("encrypt", "--key", "k1", stdin=b"env", env=env, auth=False)
    assert sealed.exit_code == 0, sealed.output
    no_token = await cli.run(
        "random", "--number-of-bytes", "1", "--server", cli.api.url, "--ca-file",
        str(cli.ca_file), env={"KMS_TOKEN": "", "KMS_TOKEN_FILE": ""}, auth=False,
    )  # fmt: skip
    assert no_token.exit_code == 1 and no_token.stderr.startswith("error: Configuration: ")
    untrusted = await cli.run(
        "random", "--number-of-bytes", "1", "--server", cli.api.url, "--token", TOKEN,
        env={"KMS_CA_FILE": ""}, auth=False,
    )  # fmt: skip
    assert untrusted.exit_code == 1 and untrusted.stderr.startswith("error: Unavailable: ")
    plain_http = await cli.run(
        "random", "--number-of-bytes", "1", "--server", "http://127.0.0.1:1", "--token", "t",
        auth=False,
    )  # fmt: skip
    assert plain_http.exit_code == 1 and "https://" in plain_http.stderr
    bad_context = await cli.run("encrypt", "-n", "dev", "--key", "k1", "--context", "novalue")
    assert bad_context.exit_code == 2


def test_open_group_lists_the_data_plane_commands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    for command in ("encrypt", "decrypt", "generate-data-key", "re-encrypt", "random"):
        assert command in result.output


# -- tokens for the KMS's audience (issue 8, item 6) ---------------------------------------


def _connection_args(cli: Cli) -> list[str]:
    return ["--server", cli.api.url, "--ca-file", str(cli.ca_file)]


NO_TOKEN_ENV = {"KMS_TOKEN": "", "KMS_TOKEN_FILE": "", "KMS_SERVICE_ACCOUNT": ""}


async def test_the_projected_token_is_read_when_no_token_is_given(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Path("/var/run/secrets/kms.cmk.dev/token") == connection.PROJECTED_TOKEN
    projected = cli.tmp / "projected" / "token"
    projected.parent.mkdir()
    projected.write_text(TOKEN + "\n")
    monkeypatch.setattr(connection, "PROJECTED_TOKEN", projected)
    result = await cli.run(
        "random", "--number-of-bytes", "4", *_connection_args(cli), env=NO_TOKEN_ENV, auth=False
    )
    assert result.exit_code == 0, result.output


async def test_the_pods_api_server_token_is_never_sent(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    service_account = cli.tmp / "serviceaccount"
    service_account.mkdir()
    (service_account / "token").write_text(TOKEN)  # would be accepted if it were sent
    monkeypatch.setattr(connection, "SERVICE_ACCOUNT_DIR", service_account)
    monkeypatch.setattr(connection, "PROJECTED_TOKEN", cli.tmp / "absent" / "token")
    result = await cli.run(
        "random", "--number-of-bytes", "4", *_connection_args(cli), env=NO_TOKEN_ENV, auth=False
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: Configuration: no token")
    assert "kms.cmk.dev" in result.stderr and "--service-account" in result.stderr


async def test_service_account_mints_a_token_for_the_kms_audience(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    minted: list[tuple[str, str, tuple[str, ...], int]] = []
    closed: list[bool] = []

    class FakeClient:
        def close(self) -> None:
            closed.append(True)

    def request_token(
        api: object, namespace: str, name: str, *, audiences: tuple[str, ...],
        expiration_seconds: int,
    ) -> str:  # fmt: skip
        assert isinstance(api, FakeClient)
        minted.append((namespace, name, tuple(audiences), expiration_seconds))
        return TOKEN

    kubeconfig = cli.tmp / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    loaded: list[Path | None] = []
    monkeypatch.setattr(
        connection, "load_api_client", lambda path: loaded.append(path) or FakeClient()
    )
    monkeypatch.setattr(connection.reviews, "request_token", request_token)
    args = [*_connection_args(cli), "--kubeconfig", str(kubeconfig)]
    result = await cli.run(
        "random", "--number-of-bytes", "4", "--service-account", "dev/app", *args,
        env=NO_TOKEN_ENV, auth=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert minted == [("dev", "app", ("kms.cmk.dev",), 600)] and closed == [True]
    assert loaded == [kubeconfig]
    other = await cli.run(
        "random", "--number-of-bytes", "4", "--service-account", "dev/app", "--audience", "kms-2",
        *args, env=NO_TOKEN_ENV, auth=False,
    )  # fmt: skip
    assert other.exit_code == 0 and minted[-1][2] == ("kms-2",)
    for bad in ("app", "dev/", "/app", "a/b/c"):
        refused = await cli.run(
            "random", "--number-of-bytes", "4", "--service-account", bad, *args,
            env=NO_TOKEN_ENV, auth=False,
        )  # fmt: skip
        assert refused.exit_code == 1 and "NAMESPACE/NAME" in refused.stderr, refused.stderr
    both = await cli.run(
        "random", "--number-of-bytes", "4", "--service-account", "dev/app", "--token", "t",
        *args, env=NO_TOKEN_ENV, auth=False,
    )  # fmt: skip
    assert both.exit_code == 1 and "not both" in both.stderr
    assert len(minted) == 2

"""``kmsctl``: the user's command line for the data-plane API (and, later, key management verbs).

Data-plane commands (``encrypt``, ``decrypt``, ``generate-data-key``, ``re-encrypt``,
``random``, ``describe-key``) talk to the API of ``kms-operator run``:

* server: ``--server``, else ``$KMS_SERVER``, else ``https://kms-operator.kms-system.svc:8443``
  (the in-cluster Service; the kubeconfig's cluster is the kube-apiserver, not this API);
* CA: ``--ca-file``, else ``$KMS_CA_FILE``, else ``/var/run/kms-operator/ca.crt`` when present
  (mount the ``kms-operator-ca`` ConfigMap there), else the system trust store;
* token (a ServiceAccount token made for the KMS's audience, ``kms.cmk.dev``): ``--token``,
  ``--token-file``, ``--service-account NS/NAME`` (minted now through TokenRequest with your
  kubeconfig: for people), ``$KMS_TOKEN``, ``$KMS_TOKEN_FILE``, else the projected token a pod
  mounts at ``/var/run/secrets/kms.cmk.dev/token`` (README: the pod volume). The pod's default
  ServiceAccount token is never sent: it is made for the Kubernetes API server, and the KMS
  refuses it;
* namespace: ``-n``, else ``$KMS_NAMESPACE``, else the pod's namespace, else ``default``.

Binary data is raw on stdin/stdout (``--base64`` prints base64 text instead). Errors print
``error: <code>: <message>`` on stderr and exit 1. The client is stdlib ``urllib``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TypeVar

import click

from kms_operator.contract import (
    CANCEL_DELETION_ANNOTATION,
    PROJECTED_TOKEN_PATH,
    ROTATE_ANNOTATION,
    TOKEN_AUDIENCE,
)
from kms_operator.kube import reviews
from kms_operator.kube.client import load_api_client
from kms_operator.kube.objects import Objects

DEFAULT_SERVER = "https://kms-operator.kms-system.svc:8443"
MOUNTED_CA = Path("/var/run/kms-operator/ca.crt")
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: The audience of the KMS's tokens (``kms-operator run --token-audience``).
DEFAULT_AUDIENCE = TOKEN_AUDIENCE
#: Where a pod mounts its projected ServiceAccount token for the KMS (see the README).
PROJECTED_TOKEN = Path(PROJECTED_TOKEN_PATH)
#: Lifetime asked for a minted token (the API server's minimum is 10 minutes).
MINTED_TOKEN_SECONDS = 600

F = TypeVar("F", bound=Callable[..., Any])


class CliError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Connection:
    server: str
    context: ssl.SSLContext
    token: str
    timeout: float

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(  # noqa: S310 - https URL built from --server
            self.server.rstrip("/") + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, context=self.context, timeout=self.timeout
            ) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError("Unavailable", f"cannot reach {self.server}: {reason}") from None


def _api_error(exc: urllib.error.HTTPError) -> CliError:
    raw = exc.read()
    try:
        error = json.loads(raw)["error"]
        return CliError(str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return CliError(f"HTTP{exc.code}", raw.decode("utf-8", "replace").strip() or exc.reason)


def _die(error: CliError) -> NoReturn:
    click.echo(f"error: {error.code}: {error.message}", err=True)
    sys.exit(1)


def _connection(
    *,
    server: str | None,
    ca_file: Path | None,
    token: str | None,
    token_file: Path | None,
    timeout: float,
    service_account: str | None = None,
    kubeconfig: Path | None = None,
    audience: str = DEFAULT_AUDIENCE,
) -> Connection:
    server = server or os.environ.get("KMS_SERVER") or DEFAULT_SERVER
    if not server.startswith("https://"):
        raise CliError("Configuration", f"the server must be an https:// URL, got {server!r}")
    ca_file = ca_file or _env_path("KMS_CA_FILE") or (MOUNTED_CA if MOUNTED_CA.is_file() else None)
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise CliError("Configuration", f"cannot load the CA file {ca_file}: {exc}") from None
    if service_account and (token or token_file):
        raise CliError("Configuration", "give --service-account or --token/--token-file, not both")
    if service_account:
        bearer = _minted_token(service_account, kubeconfig, audience)
    else:
        bearer = _token(token, token_file)
    return Connection(server, context, bearer, timeout)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _token(token: str | None, token_file: Path | None) -> str:
    if token:
        return token.strip()
    if token_file is None:
        if os.environ.get("KMS_TOKEN"):
            return os.environ["KMS_TOKEN"].strip()
        token_file = _env_path("KMS_TOKEN_FILE")
    if token_file is None and PROJECTED_TOKEN.is_file():
        token_file = PROJECTED_TOKEN
    if token_file is None:
        raise CliError(
            "Configuration",
            "no token: give --token-file, --token, $KMS_TOKEN or --service-account NS/NAME, "
            f"or mount a projected ServiceAccount token with audience {DEFAULT_AUDIENCE} at "
            f"{PROJECTED_TOKEN} (see the README)",
        )
    try:
        return token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CliError("Configuration", f"cannot read the token file: {exc}") from None


def _minted_token(service_account: str, kubeconfig: Path | None, audience: str) -> str:
    """A short-lived token of ServiceAccount ``NS/NAME`` for ``audience``, through TokenRequest
    with the kubeconfig's credentials (which need ``create`` on ``serviceaccounts/token``)."""
    namespace, _, name = service_account.partition("/")
    if not namespace or not name or "/" in name:
        raise CliError(
            "Configuration", f"--service-account must be NAMESPACE/NAME, got {service_account!r}"
        )
    try:
        api = load_api_client(kubeconfig)
    except Exception as exc:  # a missing or broken kubeconfig: say so, no traceback
        raise CliError("KubernetesUnavailable", f"cannot load the kubeconfig: {exc}") from None
    try:
        return reviews.request_token(
            api,
            namespace,
            name,
            audiences=(audience,),
            expiration_seconds=MINTED_TOKEN_SECONDS,
        )
    except reviews.TokenRequestError as exc:
        raise CliError("TokenRequestFailed", str(exc)) from None
    except Exception as exc:
        raise CliError(
            "KubernetesUnavailable", f"cannot reach the Kubernetes API: {type(exc).__name__}"
        ) from None
    finally:
        api.close()  # type: ignore[no-untyped-call]


def _namespace(namespace: str | None) -> str:
    if namespace:
        return namespace
    if os.environ.get("KMS_NAMESPACE"):
        return os.environ["KMS_NAMESPACE"]
    try:
        return (SERVICE_ACCOUNT_DIR / "namespace").read_text(encoding="utf-8").strip()
    except OSError:
        return "default"


def _context(pairs: tuple[str, ...], option: str) -> dict[str, str] | None:
    if not pairs:
        return None
    context: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint=option)
        if name in context:
            raise click.BadParameter(f"key {name!r} given twice", param_hint=option)
        context[name] = value
    return context


def _key_path(namespace: str, key: str, verb: str | None = None) -> str:
    ns = urllib.parse.quote(namespace, safe="")
    if key.startswith("alias/"):
        base = f"/v1/namespaces/{ns}/aliases/{urllib.parse.quote(key[6:], safe='/')}"
    else:
        base = f"/v1/namespaces/{ns}/keys/{urllib.parse.quote(key, safe='')}"
    return base if verb is None else f"{base}/{verb}"


def _read_input(path: Path | None, *, is_base64: bool = False) -> bytes:
    if path is None or str(path) == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CliError("Configuration", f"cannot read {path}: {exc}") from None
    if is_base64:
        try:
            return base64.b64decode(b"".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise CliError("InvalidRequest", "the input is not valid base64") from None
    return data


def _write_output(data: bytes, path: Path | None, *, as_base64: bool, secret: bool) -> None:
    payload = base64.b64encode(data) + b"\n" if as_base64 else data
    if path is None or str(path) == "-":
        stream: BinaryIO = sys.stdout.buffer
        stream.write(payload)
        stream.flush()
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(payload)


def _b64(text: object) -> bytes:
    return base64.b64decode(str(text), validate=True)


def connection_options(function: F) -> F:
    """The options every data-plane command takes, after its own."""
    options = [
        click.option("--server", help="API URL (default: $KMS_SERVER, else the in-cluster one)."),
        click.option(
            "--ca-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="CA bundle of the API (default: $KMS_CA_FILE, else the mounted CA).",
        ),
        click.option("--token", help="Bearer token (prefer --token-file: argv is visible)."),
        click.option(
            "--token-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help=f"File holding the bearer token (default: $KMS_TOKEN_FILE, {PROJECTED_TOKEN}).",
        ),
        click.option(
            "--service-account",
            metavar="NS/NAME",
            envvar="KMS_SERVICE_ACCOUNT",
            help="Mint a 10-minute token of this ServiceAccount with your kubeconfig "
            "(TokenRequest; needs create on serviceaccounts/token).",
        ),
        click.option(
            "--kubeconfig",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="With --service-account (default: $KUBECONFIG, ~/.kube/config).",
        ),
        click.option(
            "--audience",
            default=DEFAULT_AUDIENCE,
            show_default=True,
            envvar="KMS_TOKEN_AUDIENCE",
            help="With --service-account: the KMS's token audience.",
        ),
        click.option("--timeout", type=float, default=30.0, show_default=True),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _namespace_option(function: F) -> F:
    return click.option(
        "-n", "--namespace", help="Namespace of the key (default: $KMS_NAMESPACE or the pod's)."
    )(function)


def _key_option(function: F) -> F:
    return click.option("--key", required=True, help="CMK name, key id, or alias/<name>.")(function)


def _context_option(name: str = "--context", help_text: str = "") -> Callable[[F], F]:
    return click.option(
        name,
        "context_pairs" if name == "--context" else "source_context_pairs",
        multiple=True,
        metavar="KEY=VALUE",
        help=help_text or "Encryption context pair (repeatable).",
    )


def _output_options(function: F) -> F:
    function = click.option(
        "--base64", "as_base64", is_flag=True, help="Print base64 text instead of raw bytes."
    )(function)
    return click.option(
        "-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Default: stdout."
    )(function)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """kmsctl: encrypt and decrypt with customer master keys living in Kubernetes."""


@main.command()
@_namespace_option
@_key_option
@click.option(
    "--plaintext-file",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    help="Read the plaintext (raw, at most 4096 bytes) from here instead of stdin.",
)
@_context_option()
@_output_options
@connection_options
def encrypt(
    *,
    namespace: str | None,
    key: str,
    plaintext_file: Path | None,
    context_pairs: tuple[str, ...],
    output: Path | None,
    as_base64: bool,
    **conn: Any,
) -> None:
    """Encrypt stdin (raw bytes) under KEY; write the ciphertext blob."""
    context = _context(context_pairs, "--context")
    try:
        connection = _connection(**conn)
        plaintext = _read_input(plaintext_file)
        body: dict[str, Any] = {"plaintext": base64.b64encode(plaintext).decode()}
        if context is not None:
            body["encryptionContext"] = context
        answer = connection.call("POST", _key_path(_namespace(namespace), key, "encrypt"), body)
        _write_output(_b64(answer["ciphertextBlob"]), output, as_base64=as_base64, secret=False)
    except CliError as error:
        _die(error)


@main.command()
@click.option(
    "--ciphertext-file",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    help="Read the blob from here instead of stdin.",
)
@click.option("--input-base64", is_flag=True, help="The blob is base64 text, not raw bytes.")
@_context_option()
@_output_options
@connection_options
def decrypt(
    *,
    ciphertext_file: Path | None,
    input_base64: bool,
    context_pairs: tuple[str, ...],
    output: Path | None,
    as_base64: bool,
    **conn: Any,
) -> None:
    """Decrypt a blob from stdin; the key comes from the blob; write the plaintext."""
    context = _context(context_pairs, "--context")
    try:
        connection = _connection(**conn)
        blob = _read_input(ciphertext_file, is_base64=input_base64)
        body: dict[str, Any] = {"ciphertextBlob": base64.b64encode(blob).decode()}
        if context is not None:
            body["encryptionContext"] = context
        answer = connection.call("POST", "/v1/decrypt", body)
        _write_output(_b64(answer["plaintext"]), output, as_base64=as_base64, secret=True)
    except CliError as error:
        _die(error)


@main.command("generate-data-key")
@_namespace_option
@_key_option
@click.option("--key-spec", type=click.Choice(["AES_256", "AES_128"]))
@click.option("--number-of-bytes", type=click.IntRange(1, 1024))
@click.option("--without-plaintext", is_flag=True)
@_context_option()
@click.option(
    "--ciphertext-output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the raw encrypted data key here (and leave it out of the JSON).",
)
@click.option(
    "--plaintext-output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the raw data key here, mode 0600 (and leave it out of the JSON).",
)
@connection_options
def generate_data_key(
    *,
    namespace: str | None,
    key: str,
    key_spec: str | None,
    number_of_bytes: int | None,
    without_plaintext: bool,
    context_pairs: tuple[str, ...],
    ciphertext_output: Path | None,
    plaintext_output: Path | None,
    **conn: Any,
) -> None:
    """A new data key under KEY: prints the API's JSON answer (base64 fields)."""
    if key_spec and number_of_bytes:
        raise click.UsageError("give --key-spec or --number-of-bytes, not both")
    context = _context(context_pairs, "--context")
    try:
        connection = _connection(**conn)
        body: dict[str, Any] = {}
        if key_spec:
            body["keySpec"] = key_spec
        if number_of_bytes:
            body["numberOfBytes"] = number_of_bytes
        if without_plaintext:
            body["withoutPlaintext"] = True
        if context is not None:
            body["encryptionContext"] = context
        path = _key_path(_namespace(namespace), key, "generate-data-key")
        answer = connection.call("POST", path, body)
        if ciphertext_output is not None:
            blob = _b64(answer.pop("ciphertextBlob"))
            _write_output(blob, ciphertext_output, as_base64=False, secret=False)
        if plaintext_output is not None and "plaintext" in answer:
            data_key = _b64(answer.pop("plaintext"))
            _write_output(data_key, plaintext_output, as_base64=False, secret=True)
        click.echo(json.dumps(answer, indent=2))
    except CliError as error:
        _die(error)


@main.command("re-encrypt")
@click.option("-n", "--namespace", help="Namespace of the destination key.")
@click.option("--key", required=True, help="Destination CMK: name, key id, or alias/<name>.")
@click.option(
    "--ciphertext-file",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    help="Read the blob from here instead of stdin.",
)
@click.option("--input-base64", is_flag=True, help="The blob is base64 text, not raw bytes.")
@_context_option("--source-context", "Context the blob was made with (repeatable).")
@_context_option("--context", "Context for the new blob (repeatable).")
@_output_options
@connection_options
def re_encrypt(
    *,
    namespace: str | None,
    key: str,
    ciphertext_file: Path | None,
    input_base64: bool,
    source_context_pairs: tuple[str, ...],
    context_pairs: tuple[str, ...],
    output: Path | None,
    as_base64: bool,
    **conn: Any,
) -> None:
    """Re-encrypt a blob from stdin under KEY without revealing the plaintext."""
    source_context = _context(source_context_pairs, "--source-context")
    context = _context(context_pairs, "--context")
    try:
        connection = _connection(**conn)
        blob = _read_input(ciphertext_file, is_base64=input_base64)
        body: dict[str, Any] = {
            "ciphertextBlob": base64.b64encode(blob).decode(),
            "destination": {"namespace": _namespace(namespace), "key": key},
        }
        if source_context is not None:
            body["sourceEncryptionContext"] = source_context
        if context is not None:
            body["destinationEncryptionContext"] = context
        answer = connection.call("POST", "/v1/re-encrypt", body)
        _write_output(_b64(answer["ciphertextBlob"]), output, as_base64=as_base64, secret=False)
    except CliError as error:
        _die(error)


@main.command()
@click.option("--number-of-bytes", type=click.IntRange(1, 1024), required=True)
@_output_options
@connection_options
def random(number_of_bytes: int, output: Path | None, as_base64: bool, **conn: Any) -> None:
    """Random bytes from the KMS."""
    try:
        connection = _connection(**conn)
        answer = connection.call("POST", "/v1/random", {"numberOfBytes": number_of_bytes})
        _write_output(_b64(answer["plaintext"]), output, as_base64=as_base64, secret=True)
    except CliError as error:
        _die(error)


@main.command("describe-key")
@_namespace_option
@_key_option
@connection_options
def describe_key(namespace: str | None, key: str, **conn: Any) -> None:
    """A key's metadata as JSON (needs RBAC verb get on the CMK)."""
    try:
        connection = _connection(**conn)
        answer = connection.call("GET", _key_path(_namespace(namespace), key))
        click.echo(json.dumps(answer, indent=2))
    except CliError as error:
        _die(error)


# -- key lifecycle through the Kubernetes API (the custom resources, not the data plane) ----


def _cmk_objects(kubeconfig: Path | None) -> Objects:
    try:
        return Objects(load_api_client(kubeconfig))
    except Exception as exc:  # a missing or broken kubeconfig: say so, no traceback
        _die(CliError("KubernetesUnavailable", f"cannot reach the Kubernetes API: {exc}"))


def _existing_cmk(objects: Objects, namespace: str, name: str) -> dict[str, Any]:
    body = objects.get_cmk(namespace, name)
    if body is None:
        _die(CliError("NotFound", f"CustomerMasterKey {namespace}/{name} not found"))
    return body


_kubeconfig_option = click.option(
    "--kubeconfig",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Default: $KUBECONFIG, ~/.kube/config, or the in-cluster ServiceAccount.",
)


@main.command()
@_namespace_option
@click.argument("name")
@_kubeconfig_option
def rotate(namespace: str | None, name: str, kubeconfig: Path | None) -> None:
    """Rotate a CMK now: sets the kms.cmk.dev/rotate annotation to a new value."""
    ns = _namespace(namespace)
    objects = _cmk_objects(kubeconfig)
    _existing_cmk(objects, ns, name)
    value = f"{time.time_ns()}"
    objects.patch_cmk(ns, name, {"metadata": {"annotations": {ROTATE_ANNOTATION: value}}})
    click.echo(f"rotation of {ns}/{name} requested ({ROTATE_ANNOTATION}={value})", err=True)


@main.command("cancel-deletion")
@_namespace_option
@click.argument("name")
@_kubeconfig_option
def cancel_deletion(namespace: str | None, name: str, kubeconfig: Path | None) -> None:
    """Cancel a scheduled deletion: the key comes back Disabled, with the same key id."""
    ns = _namespace(namespace)
    objects = _cmk_objects(kubeconfig)
    body = _existing_cmk(objects, ns, name)
    if not body["metadata"].get("deletionTimestamp"):
        _die(
            CliError(
                "KeyInvalidState",
                f"CustomerMasterKey {ns}/{name} is not being deleted: nothing to cancel",
            )
        )
    objects.patch_cmk(ns, name, {"metadata": {"annotations": {CANCEL_DELETION_ANNOTATION: "true"}}})
    click.echo(
        f"deletion of {ns}/{name} cancelled; the key comes back Disabled "
        "(set spec.enabled: true to use it)",
        err=True,
    )


if __name__ == "__main__":  # pragma: no cover
    main()

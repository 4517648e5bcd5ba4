"""``kmsctl``: the user's command line for the data-plane API and the key lifecycle.

Data-plane commands (``encrypt``, ``decrypt``, ``generate-data-key``, ``re-encrypt``,
``random``, ``describe-key``) talk to the API of ``kms-operator run``; ``rotate`` and
``cancel-deletion`` annotate the CustomerMasterKey through the Kubernetes API. Where the calls
go, as whom and for which namespace: :mod:`.connection` (each given as an option, or
discovered). The group builds one :class:`~.connection.Session` per invocation and the common
options of each command fill it in, so a command's own code starts with its own options.

Binary data is raw on stdin/stdout (``--base64`` prints base64 text instead). Errors print
``error: <code>: <message>`` on stderr and exit 1.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click

from kms_operator.contract import CANCEL_DELETION_ANNOTATION, ROTATE_ANNOTATION
from kms_operator.kube.objects import Objects

from .connection import (
    DEFAULT_AUDIENCE,
    DEFAULT_TIMEOUT_SECONDS,
    PROJECTED_TOKEN,
    CliError,
    Session,
)

F = TypeVar("F", bound=Callable[..., Any])


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


def _into_session(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A common option's value goes to the invocation's :class:`Session`, not to the command."""
    setattr(ctx.ensure_object(Session), param.name or "", value)


def _session_option(*names: str, **attrs: Any) -> Callable[[F], F]:
    return click.option(*names, expose_value=False, callback=_into_session, **attrs)


def _kubeconfig_option(help_text: str) -> Callable[[F], F]:
    return _session_option(
        "--kubeconfig", type=click.Path(path_type=Path, dir_okay=False, exists=True), help=help_text
    )


def connection_options(function: F) -> F:
    """The options every data-plane command takes, after its own."""
    options = [
        _session_option(
            "--server", help="API URL (default: $KMS_SERVER, else the in-cluster one)."
        ),
        _session_option(
            "--ca-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="CA bundle of the API (default: $KMS_CA_FILE, else the mounted CA).",
        ),
        _session_option("--token", help="Bearer token (prefer --token-file: argv is visible)."),
        _session_option(
            "--token-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help=f"File holding the bearer token (default: $KMS_TOKEN_FILE, {PROJECTED_TOKEN}).",
        ),
        _session_option(
            "--service-account",
            metavar="NS/NAME",
            envvar="KMS_SERVICE_ACCOUNT",
            help="Mint a 10-minute token of this ServiceAccount with your kubeconfig "
            "(TokenRequest; needs create on serviceaccounts/token).",
        ),
        _kubeconfig_option("With --service-account (default: $KUBECONFIG, ~/.kube/config)."),
        _session_option(
            "--audience",
            default=DEFAULT_AUDIENCE,
            show_default=True,
            envvar="KMS_TOKEN_AUDIENCE",
            help="With --service-account: the KMS's token audience.",
        ),
        _session_option(
            "--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, show_default=True
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _namespace_option(
    help_text: str = "Namespace of the key (default: $KMS_NAMESPACE or the pod's).",
) -> Callable[[F], F]:
    return _session_option("-n", "--namespace", "given_namespace", help=help_text)


def _key_option(help_text: str = "CMK name, key id, or alias/<name>.") -> Callable[[F], F]:
    return click.option("--key", required=True, help=help_text)


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


def _blob_input_options(function: F) -> F:
    function = click.option(
        "--input-base64", is_flag=True, help="The blob is base64 text, not raw bytes."
    )(function)
    return click.option(
        "--ciphertext-file",
        type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
        help="Read the blob from here instead of stdin.",
    )(function)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """kmsctl: encrypt and decrypt with customer master keys living in Kubernetes."""
    ctx.obj = Session()


@main.command()
@_namespace_option()
@_key_option()
@click.option(
    "--plaintext-file",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    help="Read the plaintext (raw, at most 4096 bytes) from here instead of stdin.",
)
@_context_option()
@_output_options
@connection_options
@click.pass_obj
def encrypt(
    session: Session,
    *,
    key: str,
    plaintext_file: Path | None,
    context_pairs: tuple[str, ...],
    output: Path | None,
    as_base64: bool,
) -> None:
    """Encrypt stdin (raw bytes) under KEY; write the ciphertext blob."""
    context = _context(context_pairs, "--context")
    connection = session.connect()
    plaintext = _read_input(plaintext_file)
    body: dict[str, Any] = {"plaintext": base64.b64encode(plaintext).decode()}
    if context is not None:
        body["encryptionContext"] = context
    answer = connection.call("POST", _key_path(session.namespace, key, "encrypt"), body)
    _write_output(_b64(answer["ciphertextBlob"]), output, as_base64=as_base64, secret=False)


@main.command()
@_blob_input_options
@_context_option()
@_output_options
@connection_options
@click.pass_obj
def decrypt(
    session: Session,
    *,
    ciphertext_file: Path | None,
    input_base64: bool,
    context_pairs: tuple[str, ...],
    output: Path | None,
    as_base64: bool,
) -> None:
    """Decrypt a blob from stdin; the key comes from the blob; write the plaintext."""
    context = _context(context_pairs, "--context")
    connection = session.connect()
    blob = _read_input(ciphertext_file, is_base64=input_base64)
    body: dict[str, Any] = {"ciphertextBlob": base64.b64encode(blob).decode()}
    if context is not None:
        body["encryptionContext"] = context
    answer = connection.call("POST", "/v1/decrypt", body)
    _write_output(_b64(answer["plaintext"]), output, as_base64=as_base64, secret=True)


@main.command("generate-data-key")
@_namespace_option()
@_key_option()
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
@click.pass_obj
def generate_data_key(
    session: Session,
    *,
    key: str,
    key_spec: str | None,
    number_of_bytes: int | None,
    without_plaintext: bool,
    context_pairs: tuple[str, ...],
    ciphertext_output: Path | None,
    plaintext_output: Path | None,
) -> None:
    """A new data key under KEY: prints the API's JSON answer (base64 fields)."""
    if key_spec and number_of_bytes:
        raise click.UsageError("give --key-spec or --number-of-bytes, not both")
    context = _context(context_pairs, "--context")
    connection = session.connect()
    body: dict[str, Any] = {}
    if key_spec:
        body["keySpec"] = key_spec
    if number_of_bytes:
        body["numberOfBytes"] = number_of_bytes
    if without_plaintext:
        body["withoutPlaintext"] = True
    if context is not None:
        body["encryptionContext"] = context
    path = _key_path(session.namespace, key, "generate-data-key")
    answer = connection.call("POST", path, body)
    if ciphertext_output is not None:
        blob = _b64(answer.pop("ciphertextBlob"))
        _write_output(blob, ciphertext_output, as_base64=False, secret=False)
    if plaintext_output is not None and "plaintext" in answer:
        data_key = _b64(answer.pop("plaintext"))
        _write_output(data_key, plaintext_output, as_base64=False, secret=True)
    click.echo(json.dumps(answer, indent=2))


@main.command("re-encrypt")
@_namespace_option("Namespace of the destination key.")
@_key_option("Destination CMK: name, key id, or alias/<name>.")
@_blob_input_options
@_context_option("--source-context", "Context the blob was made with (repeatable).")
@_context_option("--context", "Context for the new blob (repeatable).")
@_output_options
@connection_options
@click.pass_obj
def re_encrypt(
    session: Session,
    *,
    key: str,
    ciphertext_file: Path | None,
    input_base64: bool,
    source_context_pairs: tuple[str, ...],
    context_pairs: tuple[str, ...],
    output: Path | None,
    as_base64: bool,
) -> None:
    """Re-encrypt a blob from stdin under KEY without revealing the plaintext."""
    source_context = _context(source_context_pairs, "--source-context")
    context = _context(context_pairs, "--context")
    connection = session.connect()
    blob = _read_input(ciphertext_file, is_base64=input_base64)
    body: dict[str, Any] = {
        "ciphertextBlob": base64.b64encode(blob).decode(),
        "destination": {"namespace": session.namespace, "key": key},
    }
    if source_context is not None:
        body["sourceEncryptionContext"] = source_context
    if context is not None:
        body["destinationEncryptionContext"] = context
    answer = connection.call("POST", "/v1/re-encrypt", body)
    _write_output(_b64(answer["ciphertextBlob"]), output, as_base64=as_base64, secret=False)


@main.command()
@click.option("--number-of-bytes", type=click.IntRange(1, 1024), required=True)
@_output_options
@connection_options
@click.pass_obj
def random(session: Session, *, number_of_bytes: int, output: Path | None, as_base64: bool) -> None:
    """Random bytes from the KMS."""
    answer = session.connect().call("POST", "/v1/random", {"numberOfBytes": number_of_bytes})
    _write_output(_b64(answer["plaintext"]), output, as_base64=as_base64, secret=True)


@main.command("describe-key")
@_namespace_option()
@_key_option()
@connection_options
@click.pass_obj
def describe_key(session: Session, *, key: str) -> None:
    """A key's metadata as JSON (needs RBAC verb get on the CMK)."""
    answer = session.connect().call("GET", _key_path(session.namespace, key))
    click.echo(json.dumps(answer, indent=2))


# -- key lifecycle through the Kubernetes API (the custom resources, not the data plane) ----


def _existing_cmk(objects: Objects, namespace: str, name: str) -> dict[str, Any]:
    body = objects.get_cmk(namespace, name)
    if body is None:
        raise CliError("NotFound", f"CustomerMasterKey {namespace}/{name} not found")
    return body


_lifecycle_kubeconfig = _kubeconfig_option(
    "Default: $KUBECONFIG, ~/.kube/config, or the in-cluster ServiceAccount."
)


@main.command()
@_namespace_option()
@click.argument("name")
@_lifecycle_kubeconfig
@click.pass_obj
def rotate(session: Session, name: str) -> None:
    """Rotate a CMK now: sets the kms.cmk.dev/rotate annotation to a new value."""
    ns = session.namespace
    objects = session.cmk_objects()
    _existing_cmk(objects, ns, name)
    value = f"{time.time_ns()}"
    objects.patch_cmk(ns, name, {"metadata": {"annotations": {ROTATE_ANNOTATION: value}}})
    click.echo(f"rotation of {ns}/{name} requested ({ROTATE_ANNOTATION}={value})", err=True)


@main.command("cancel-deletion")
@_namespace_option()
@click.argument("name")
@_lifecycle_kubeconfig
@click.pass_obj
def cancel_deletion(session: Session, name: str) -> None:
    """Cancel a scheduled deletion: the key comes back Disabled, with the same key id."""
    ns = session.namespace
    objects = session.cmk_objects()
    body = _existing_cmk(objects, ns, name)
    if not body["metadata"].get("deletionTimestamp"):
        raise CliError(
            "KeyInvalidState",
            f"CustomerMasterKey {ns}/{name} is not being deleted: nothing to cancel",
        )
    objects.patch_cmk(ns, name, {"metadata": {"annotations": {CANCEL_DELETION_ANNOTATION: "true"}}})
    click.echo(
        f"deletion of {ns}/{name} cancelled; the key comes back Disabled "
        "(set spec.enabled: true to use it)",
        err=True,
    )


if __name__ == "__main__":  # pragma: no cover
    main()

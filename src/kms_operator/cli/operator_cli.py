"""``kms-operator``: run the operator and its API; back up and restore the store; the KMS v2
plugin on control-plane nodes (``kms-plugin``, in :mod:`kms_operator.cli.kms_plugin`).

Every option of ``run`` may also come from the environment as ``KMS_<OPTION>`` (for example
``KMS_DAY_SECONDS``, ``KMS_TOKEN_AUDIENCES`` with space-separated values), except
``--static-token-file``: static-token mode (every listed user may do everything) is enabled by
the flag alone, and a ``KMS_STATIC_TOKEN_FILE`` in the environment is refused at start, so a
stray variable can never switch TokenReview off.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import click

from kms_operator.cli import running
from kms_operator.cli.kms_plugin import kms_plugin
from kms_operator.devcluster.controlplane import LocalControlPlane
from kms_operator.errors import KmsError
from kms_operator.kube.client import load_api_client
from kms_operator.kube.crds import apply_crds, ensure_namespace
from kms_operator.logs import configure_logging
from kms_operator.settings import Settings
from kms_operator.store.backups import restore_store
from kms_operator.store.rootkey import load_root_key_file
from kms_operator.store.sqlite import SqliteKeyStore

log = logging.getLogger(__name__)

_REPO_CRDS = Path(__file__).resolve().parents[3] / "crds"

#: Environment variables that would enable static-token mode if click read them (the explicit
#: prefix of ``run`` and the one click derives for a sub-command by default).
STATIC_TOKEN_ENV = ("KMS_STATIC_TOKEN_FILE", "KMS_RUN_STATIC_TOKEN_FILE")


def _positive_seconds(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        env = f"{ctx.auto_envvar_prefix}_{(param.name or '').upper()}"
        raise click.BadParameter(
            f"must be a positive number of seconds (flag or {env}), got {value}"
        )
    return value


def _refuse_static_token_env(static_token_file: Path | None) -> None:
    for name in STATIC_TOKEN_ENV:
        if not os.environ.get(name):
            continue
        if static_token_file is not None:
            click.echo(f"warning: {name} is ignored: --static-token-file is given", err=True)
            continue
        raise click.UsageError(
            f"environment variable {name} is set, but static-token mode is enabled by the flag "
            "--static-token-file only (static tokens replace TokenReview and allow everything: "
            "local development only); unset the variable, or give the flag"
        )


def _has_cluster_config() -> bool:
    return bool(
        os.environ.get("KUBECONFIG")
        or os.environ.get("KUBERNETES_SERVICE_HOST")
        or (Path.home() / ".kube" / "config").is_file()
    )


@click.group(context_settings={"auto_envvar_prefix": "KMS", "show_default": True})
def main() -> None:
    """kms-operator: a Key Management Service inside Kubernetes."""


@main.command(context_settings={"auto_envvar_prefix": "KMS"})
@click.option("--store-path", type=click.Path(path_type=Path), default=Settings.store_path)
@click.option("--root-key-file", type=click.Path(path_type=Path), default=Settings.root_key_file)
@click.option("--namespace", "namespaces", multiple=True, help="Watch only these (repeatable).")
@click.option(
    "--day-seconds",
    type=float,
    default=Settings.day_seconds,
    callback=_positive_seconds,
    help="Length of a day for windows, periods and expiries (tests only; positive).",
)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option("--log-level", default="INFO")
@click.option("--operator-namespace", default=Settings.operator_namespace)
@click.option("--kubeconfig", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option(
    "--cluster",
    type=click.Choice(["auto", "kubeconfig", "local"]),
    default="auto",
    help="auto: the configured cluster if any, else a local control plane.",
)
@click.option(
    "--local-dir",
    type=click.Path(path_type=Path),
    default=Path(".local"),
    help="Where a local control plane keeps its files.",
)
@click.option(
    "--crds-dir",
    type=click.Path(path_type=Path),
    default=_REPO_CRDS,
    help="CRDs installed on a local control plane.",
)
@click.option("--api/--no-api", "api_enabled", default=True)
@click.option("--api-host", default=Settings.api_host)
@click.option("--api-port", type=int, default=Settings.api_port)
@click.option("--tls-cert-file", type=click.Path(path_type=Path), default=None)
@click.option("--tls-key-file", type=click.Path(path_type=Path), default=None)
@click.option("--tls-dir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--tls-ca-file",
    type=click.Path(path_type=Path),
    default=None,
    help="With --tls-cert-file: the CA bundle clients trust.",
)
@click.option(
    "--api-service-name",
    default=Settings.api_service_name,
    help="The Service fronting the API (its DNS names go into generated certs).",
)
@click.option("--ca-configmap", default=Settings.ca_configmap)
@click.option(
    "--token-audience",
    "token_audiences",
    multiple=True,
    default=Settings.token_audiences,
    help="Audience a caller's token must carry (repeatable; any one of them suffices).",
)
@click.option(
    "--aws-account-id",
    default=Settings.aws_account_id,
    help="The twelve-digit account of the AWS protocol's key ARNs.",
)
@click.option(
    "--static-token-file",
    type=click.Path(path_type=Path),
    default=None,
    allow_from_autoenv=False,
    help="Local development only: tokens from a file instead of TokenReview (flag only).",
)
@click.option(
    "--auth-cache-seconds", type=click.FloatRange(min=0), default=Settings.auth_cache_seconds
)
@click.option(
    "--request-timeout-seconds",
    type=float,
    default=Settings.request_timeout_seconds,
    callback=_positive_seconds,
    help="A request must arrive whole within this time; idle connections close after it.",
)
@click.option("--audit-log", default=Settings.audit_log, help="A file, or - for stdout.")
@click.option(
    "--webhook/--no-webhook",
    "webhook_enabled",
    default=False,
    help="Serve Kopf's validating webhook (registers it with the API server).",
)
@click.option("--webhook-port", type=int, default=Settings.webhook_port)
@click.option(
    "--webhook-host",
    default=None,
    help="Host the API server calls the webhook at [default: <svc>.<ns>.svc].",
)
@click.option("--max-workers", type=int, default=Settings.max_workers)
def run(cluster: str, local_dir: Path, crds_dir: Path, **options: object) -> None:
    """Run the operator and the data-plane API in one process."""
    settings = parse_run_settings(options)
    configure_logging(settings.log_format, settings.log_level)
    try:
        with _cluster(settings, cluster, local_dir, crds_dir) as effective:
            running.run(effective)
    except KmsError as exc:
        raise click.ClickException(exc.message) from None


def parse_run_settings(options: dict[str, object]) -> Settings:
    """The settings of ``run`` from its parsed options, or a usage error that says why not."""
    static_token_file = options.get("static_token_file")
    _refuse_static_token_env(static_token_file if isinstance(static_token_file, Path) else None)
    try:
        return Settings(**options)  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@contextlib.contextmanager
def _cluster(
    settings: Settings, cluster: str, local_dir: Path, crds_dir: Path
) -> Iterator[Settings]:
    use_local = cluster == "local" or (
        cluster == "auto" and settings.kubeconfig is None and not _has_cluster_config()
    )
    if not use_local:
        yield settings
        return
    local_dir.mkdir(parents=True, exist_ok=True)
    with LocalControlPlane() as plane:
        api_client = load_api_client(plane.kubeconfig)
        try:
            apply_crds(api_client, crds_dir)
            ensure_namespace(api_client, settings.operator_namespace)
        finally:
            api_client.close()  # type: ignore[no-untyped-call]
        click.echo(
            "A local control plane is running for this session:\n"
            f"  export KUBECONFIG={plane.kubeconfig}\n"
            f"  kubectl --kubeconfig {plane.kubeconfig} get kms -A\n",
            err=True,
        )
        yield replace(settings, kubeconfig=plane.kubeconfig)


@main.group()
def store() -> None:
    """Back up and restore the key store (material stays wrapped under the root key)."""


_store_path = click.option(
    "--store-path", type=click.Path(path_type=Path), default=Settings.store_path
)
_root_key = click.option(
    "--root-key-file", type=click.Path(path_type=Path), default=Settings.root_key_file
)


@store.command()
@_store_path
@_root_key
@click.option("--to", "destination", type=click.Path(path_type=Path), required=True)
def backup(store_path: Path, root_key_file: Path, destination: Path) -> None:
    """Write a consistent copy of the store (safe while the operator runs)."""
    try:
        key_store = SqliteKeyStore(store_path, load_root_key_file(root_key_file, create=False))
        try:
            key_store.backup(destination)
        finally:
            key_store.close()
    except KmsError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"backed up {store_path} to {destination}")


@store.command()
@_store_path
@_root_key
@click.option("--from", "source", type=click.Path(path_type=Path), required=True)
def restore(store_path: Path, root_key_file: Path, source: Path) -> None:
    """Replace the store with a backup (stop the operator first)."""
    try:
        restore_store(source, store_path, load_root_key_file(root_key_file, create=False))
    except KmsError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"restored {store_path} from {source}")


main.add_command(kms_plugin)


if __name__ == "__main__":
    sys.exit(main())

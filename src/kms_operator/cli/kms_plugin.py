"""``kms-operator kms-plugin``: the Kubernetes KMS v2 plugin on a control-plane node.

``serve`` is the plugin's composition root: the node's store and root key, a
:class:`KeyService` over them, the servicer and the server on the socket, until SIGTERM or
SIGINT. It never creates a root key or a store: a typo in a path must not start an empty
plugin under a root key nobody kept.

``keys create|rotate|list|disable|enable|import`` manage the node's keys, one domain verb
each, also while ``serve`` runs (it sees the change within about a second, and at once on
kube-apiserver's next Status). Only ``create`` makes the store when it is absent (the first
command on a new node), and the root key file with it when that is absent too. Each command
holds the store's lock file (``<store>.lock``) from opening the store to closing it, so two
commands never interleave a read and a write; ``serve`` only reads and takes no lock. Refusals
exit non-zero with one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import click

from kms_operator.errors import InvalidRequest, KmsError
from kms_operator.keys.service import KeyService
from kms_operator.kmsplugin.nodekeys import (
    DEFAULT_KEY_NAME,
    PLUGIN_NAMESPACE,
    NodeKeys,
    check_key_name,
    reported_key_id,
)
from kms_operator.kmsplugin.server import PluginServer
from kms_operator.kmsplugin.servicer import KmsPluginServicer
from kms_operator.logs import configure_logging
from kms_operator.store.records import KeyState, Origin, VersionState
from kms_operator.store.rootkey import load_root_key_file
from kms_operator.store.sqlite import SqliteKeyStore

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/var/run/kms-operator/kms.sock")
DEFAULT_STORE = Path("/var/lib/kms-operator/kms-plugin/store.db")
DEFAULT_ROOT_KEY = Path("/etc/kms-operator/kms-plugin/root.key")
_MIGRATE = "kubectl get secrets -A -o json | kubectl replace -f -"


def _key_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_key_name(value)
    except InvalidRequest as exc:
        raise click.BadParameter(exc.message) from None


_store_path = click.option(
    "--store-path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_STORE,
    help="The plugin's own store file on this node.",
)
_root_key = click.option(
    "--root-key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_ROOT_KEY,
    help="The 32-byte root key wrapping the store's material (mode 0600).",
)
_key = click.option(
    "--key",
    "key_name",
    default=DEFAULT_KEY_NAME,
    callback=_key_name,
    help=f"The key's name in the plugin's store (namespace {PLUGIN_NAMESPACE!r}).",
)


@click.group("kms-plugin")
def kms_plugin() -> None:
    """The Kubernetes KMS v2 plugin: kube-apiserver's Secrets encrypted under this KMS."""


@kms_plugin.command()
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_SOCKET,
    help="The unix socket kube-apiserver calls (EncryptionConfiguration endpoint).",
)
@_store_path
@_root_key
@_key
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option("--log-level", default="INFO")
def serve(
    *,
    socket_path: Path,
    store_path: Path,
    root_key_file: Path,
    key_name: str,
    log_format: str,
    log_level: str,
) -> None:
    """Serve v2.KeyManagementService on the socket until SIGTERM or SIGINT."""
    configure_logging(log_format, log_level)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, frame: stop.set())
    _require_store(store_path)
    try:
        store = _open_store(store_path, root_key_file, first_use=False)
        try:
            service = KeyService(store)
            service.warm_cache()
            server = PluginServer(KmsPluginServicer(service, key_name), socket_path)
            server.start()
            try:
                record = NodeKeys(service).find(key_name)
                log.info(
                    "serving key %s/%s from %s: key_id %s",
                    PLUGIN_NAMESPACE,
                    key_name,
                    store_path,
                    "(none: the key does not exist)" if record is None else reported_key_id(record),
                )
                stop.wait()
                log.info("stopping on a signal")
            finally:
                server.stop()
        finally:
            store.close()
    except KmsError as exc:
        raise click.ClickException(exc.message) from None


@kms_plugin.group()
def keys() -> None:
    """Manage the plugin's keys on this node (fine while serve runs)."""


@keys.command()
@_store_path
@_root_key
@_key
@click.option(
    "--origin",
    type=click.Choice([o.value for o in Origin]),
    default=Origin.KMS.value,
    help="KMS: material made here. EXTERNAL: material imported (shared between nodes).",
)
@click.option(
    "--key-id",
    "given_key_id",
    type=click.UUID,
    default=None,
    help="EXTERNAL only: the key id of the same key on another node.",
)
def create(
    store_path: Path,
    root_key_file: Path,
    key_name: str,
    origin: str,
    given_key_id: uuid.UUID | None,
) -> None:
    """Create the key (creates the root key file and the store on first use)."""
    with _node_keys(store_path, root_key_file, first_use=True) as node_keys:
        record = node_keys.create(key_name, Origin(origin), given_key_id)
    click.echo(
        f"key {key_name}: key id {record.key_id}, origin {record.origin}, {record.state}; "
        f"key_id {reported_key_id(record)}"
    )
    if record.state is KeyState.PENDING_IMPORT:
        click.echo(
            f"import its material: kms-operator kms-plugin keys import --key {key_name} "
            "--material-file FILE (the same 32 bytes on every node that shares the key)"
        )


@keys.command()
@_store_path
@_root_key
@_key
def rotate(store_path: Path, root_key_file: Path, key_name: str) -> None:
    """A new current version (KMS keys); EXTERNAL keys rotate by importing new material."""
    with _node_keys(store_path, root_key_file) as node_keys:
        record = node_keys.rotate(key_name)
    click.echo(
        f"key {key_name} rotated to version {record.current_version}: key_id "
        f"{reported_key_id(record)}; kube-apiserver writes under it after its next Status, "
        f"and rewrites existing Secrets on '{_MIGRATE}'"
    )


@keys.command("list")
@_store_path
@_root_key
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table")
def list_keys(store_path: Path, root_key_file: Path, output: str) -> None:
    """The keys of the plugin's store: name, key id, state, version, the key_id reported."""
    with _node_keys(store_path, root_key_file) as node_keys:
        views = node_keys.list()
    if output == "json":
        click.echo(
            json.dumps(
                [
                    {
                        "name": v.name,
                        "keyId": str(v.key_id),
                        "origin": v.origin.value,
                        "state": v.state.value,
                        "currentVersion": v.current_version,
                        "pluginKeyId": v.plugin_key_id,
                    }
                    for v in views
                ],
                indent=2,
            )
        )
        return
    rows = [("NAME", "KEY ID", "ORIGIN", "STATE", "VERSION", "KEY_ID REPORTED")]
    rows += [
        (v.name, str(v.key_id), v.origin, v.state, str(v.current_version), v.plugin_key_id)
        for v in views
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@keys.command()
@_store_path
@_root_key
@_key
def disable(store_path: Path, root_key_file: Path, key_name: str) -> None:
    """Refuse every encrypt and decrypt (kube-apiserver can then read no Secret)."""
    _set_enabled(store_path, root_key_file, key_name, enabled=False)


@keys.command()
@_store_path
@_root_key
@_key
def enable(store_path: Path, root_key_file: Path, key_name: str) -> None:
    """Use the key again."""
    _set_enabled(store_path, root_key_file, key_name, enabled=True)


@keys.command("import")
@_store_path
@_root_key
@_key
@click.option(
    "--material-file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help="32 raw bytes of key material (the same file on every node sharing the key).",
)
def import_material(
    store_path: Path, root_key_file: Path, key_name: str, material_file: Path
) -> None:
    """Import key material into an EXTERNAL key (new material: a new version)."""
    mode = material_file.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        click.echo(
            f"warning: {material_file} has mode {stat.S_IMODE(mode):04o}; keep key material "
            "owner-only (and offline once every node imported it)",
            err=True,
        )
    material = material_file.read_bytes()
    with _node_keys(store_path, root_key_file) as node_keys:
        before = node_keys.find(key_name)
        record, number = node_keys.import_material(key_name, material)
    known = None if before is None else before.version(number)
    held = known is not None and known.state is VersionState.ENABLED
    what = "is already" if held else "imported as"
    click.echo(
        f"material {what} version {number} of key {key_name} ({record.key_id}); "
        f"key_id {reported_key_id(record)}"
    )


def _set_enabled(store_path: Path, root_key_file: Path, key_name: str, *, enabled: bool) -> None:
    with _node_keys(store_path, root_key_file) as node_keys:
        record = node_keys.set_enabled(key_name, enabled)
    click.echo(f"key {key_name} ({record.key_id}) is {record.state}")


@contextlib.contextmanager
def _node_keys(
    store_path: Path, root_key_file: Path, *, first_use: bool = False
) -> Iterator[NodeKeys]:
    """The node's keys, the store opened under its lock file; domain refusals as one line."""
    if not first_use:
        _require_store(store_path)
    try:
        with _store_lock(store_path):
            store = _open_store(store_path, root_key_file, first_use=first_use)
            try:
                yield NodeKeys(KeyService(store))
            finally:
                store.close()
    except KmsError as exc:
        raise click.ClickException(exc.message) from None


def _require_store(store_path: Path) -> None:
    if not store_path.exists():
        raise click.ClickException(
            f"no plugin store at {store_path}: create the key first "
            "(kms-operator kms-plugin keys create)"
        )


def _open_store(store_path: Path, root_key_file: Path, *, first_use: bool) -> SqliteKeyStore:
    new_store = first_use and not store_path.exists()
    # A new root key only with a new store: an existing store's root key is never replaced.
    root_key = load_root_key_file(root_key_file, create=new_store)
    if new_store:
        # Owner-only from the first byte; SQLite gives its -wal and -shm files the same mode.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(store_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return SqliteKeyStore(store_path, root_key)


@contextlib.contextmanager
def _store_lock(store_path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``<store>.lock``: one keys command at a time per store."""
    store_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(store_path.with_name(store_path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock

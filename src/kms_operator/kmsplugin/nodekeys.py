"""The plugin's keys on its node: where they live, the key_id kube-apiserver sees, their verbs.

The plugin's store is its own file on the control-plane node, never the operator's. The
domain binds every key to a namespace and a name; the plugin's keys all live in the fixed
pseudo-namespace :data:`PLUGIN_NAMESPACE` (no Kubernetes namespace: the plugin never talks to
the cluster it protects), named by ``--key`` (default :data:`DEFAULT_KEY_NAME`).

**key_id** (what ``Status`` and ``Encrypt`` report, and ``Decrypt`` gets back) is
``<key id>:<version>``: the key's UUID and its current version, for example
``2f1c…-…:3``. Rotation appends a version, so it changes on rotation, only ever forward (never
back to an earlier value), and it is never reused: key ids are random UUIDs (or, for a key
shared between nodes, the one UUID they share) and versions only grow. It is at most 47
bytes, far under the 1 kB kube-apiserver allows.

:class:`NodeKeys` holds the verbs of ``kms-operator kms-plugin keys``, each one call of the
domain's :class:`~kms_operator.keys.service.KeyService` (the same lifecycle rules as a
CustomerMasterKey's: EXTERNAL keys rotate only by importing, different material for a version
that lost its own is refused).
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass

from kms_operator.crypto import wrapping
from kms_operator.errors import InvalidRequest, NotFound
from kms_operator.keys.rules import KEY_ID_PATTERN
from kms_operator.keys.service import MATERIAL_SIZE, KeyService, KeySettings
from kms_operator.store.records import KeyRecord, KeyState, Origin

log = logging.getLogger(__name__)

#: The pseudo-namespace of every key in a plugin's store.
PLUGIN_NAMESPACE = "kms-plugin"
DEFAULT_KEY_NAME = "kube-apiserver"
#: The wrapping of the local import flow. The material never leaves the ``keys import``
#: process: the wrapping is there so that the import goes through the domain's own verbs
#: (parameters, unwrap, size and fingerprint rules), not to protect a transfer.
IMPORT_WRAPPING = (wrapping.WrappingAlgorithm.RSAES_OAEP_SHA_256, wrapping.WrappingKeySpec.RSA_2048)

_KEY_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MAX_VERSION = 2**32 - 1  # the blob's header holds a uint32


def key_id_text(key_id: uuid.UUID, version: int) -> str:
    """The key_id kube-apiserver sees for one version of a key."""
    return f"{key_id}:{version}"


def reported_key_id(record: KeyRecord) -> str:
    """The key_id the plugin reports for ``record``: its current version."""
    return key_id_text(record.key_id, record.current_version)


def parse_key_id(text: str) -> tuple[uuid.UUID, int] | None:
    """The (key id, version) a key_id names, or None when it is not one this plugin makes."""
    key_part, sep, version_part = text.partition(":")
    if not sep or not KEY_ID_PATTERN.match(key_part):
        return None
    if not version_part.isascii() or not version_part.isdigit() or version_part[0] == "0":
        return None
    version = int(version_part)
    if version > _MAX_VERSION:
        return None
    return uuid.UUID(key_part), version


def check_key_name(name: str) -> str:
    if not _KEY_NAME.match(name):
        raise InvalidRequest(
            f"key name {name!r} must be 1-63 lower-case letters, digits or '-', starting and "
            "ending with a letter or digit",
            field="key",
        )
    return name


@dataclass(frozen=True, slots=True)
class NodeKeyView:
    """What ``keys list`` shows of a key (never material)."""

    name: str
    key_id: uuid.UUID
    origin: Origin
    state: KeyState
    current_version: int
    #: What Status reports while this key is the plugin's ``--key``.
    plugin_key_id: str

    @classmethod
    def of(cls, record: KeyRecord) -> NodeKeyView:
        return cls(
            record.name,
            record.key_id,
            record.origin,
            record.state,
            record.current_version,
            reported_key_id(record),
        )


class NodeKeys:
    """The verbs of ``kms-operator kms-plugin keys`` over the node's :class:`KeyService`."""

    def __init__(self, service: KeyService) -> None:
        self.service = service

    def find(self, name: str) -> KeyRecord | None:
        return self.service.find(PLUGIN_NAMESPACE, name)

    def require(self, name: str) -> KeyRecord:
        record = self.find(name)
        if record is None:
            raise NotFound(
                f"no key {name!r} in this plugin store: create it with "
                f"'kms-operator kms-plugin keys create --key {name}'"
            )
        return record

    def list(self) -> list[NodeKeyView]:
        """Every key of the plugin's pseudo-namespace that still has a name (not destroyed)."""
        return [
            NodeKeyView.of(record)
            for record in self.service.keys()
            if record.namespace == PLUGIN_NAMESPACE
            and record.state is not KeyState.DESTROYED
            and not record.is_detached
        ]

    def create(
        self, name: str, origin: Origin = Origin.KMS, key_id: uuid.UUID | None = None
    ) -> KeyRecord:
        """Create the key (idempotent: the existing key of that name and origin comes back).

        ``key_id`` (EXTERNAL keys only) makes this the same key as another node's, so that the
        same material imported in both makes blobs each of them decrypts.
        """
        existing = self.find(check_key_name(name))
        if existing is not None and existing.origin is not origin:
            raise InvalidRequest(
                f"key {name} exists already with origin {existing.origin}, not {origin}",
                field="origin",
            )
        record = self.service.create_key(
            PLUGIN_NAMESPACE,
            name,
            origin=origin,
            key_id=key_id,
            description="Kubernetes KMS v2 plugin key (kms-operator kms-plugin)",
        )
        log.info("plugin key %s is %s (origin %s)", name, record.key_id, record.origin)
        return record

    def rotate(self, name: str) -> KeyRecord:
        """A new current version (KMS keys); EXTERNAL keys rotate by importing new material."""
        record = self.require(name)
        if record.origin is Origin.EXTERNAL:
            raise InvalidRequest(
                f"key {name} has EXTERNAL origin: it rotates by importing new material "
                f"('kms-operator kms-plugin keys import --key {name} --material-file FILE', "
                "the same file on every node that shares the key)",
                field="origin",
            )
        return self._apply(record, enabled=record.enabled, rotate=True)

    def set_enabled(self, name: str, enabled: bool) -> KeyRecord:
        return self._apply(self.require(name), enabled=enabled, rotate=False)

    def import_material(self, name: str, material: bytes) -> tuple[KeyRecord, int]:
        """Import 32 bytes of material the way a KeyMaterialImport does, in this process:
        import parameters, wrap under their public key, import; return the key and the
        version the material backs (the same material again: the version it backs already)."""
        if len(material) != MATERIAL_SIZE:
            raise InvalidRequest(
                f"key material must be {MATERIAL_SIZE} raw bytes, got {len(material)}",
                field="material",
            )
        record = self.require(name)
        algorithm, spec = IMPORT_WRAPPING
        params = self.service.create_import_parameters(record.key_id, algorithm, spec)
        wrapped = wrapping.wrap_material(algorithm, params.public_key_pem.encode(), material)
        return self.service.import_material(record.key_id, params.token, wrapped)

    def _apply(self, record: KeyRecord, *, enabled: bool, rotate: bool) -> KeyRecord:
        """The domain's one way of changing a key's settings: its whole spec, one change."""
        desired = KeySettings(
            description=record.description,
            enabled=enabled,
            aliases=record.aliases,
            rotation_period_days=record.rotation_period_days,
        )
        result = self.service.apply_spec(record.key_id, desired, rotate=rotate)
        if result.problems:
            raise result.problems[0]
        return result.record

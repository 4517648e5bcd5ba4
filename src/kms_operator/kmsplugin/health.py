"""What ``Status`` answers: ``healthz`` and the key_id kube-apiserver writes under next.

``ok`` only when an encrypt and a decrypt under the current key version work. That probe (32
random bytes sealed and opened in memory, no disk) is cached for :data:`HEALTH_TTL_SECONDS`
while the key's record stays the same, so kube-apiserver's polling costs nothing; any change
of the key (a rotation, a disable, read by :meth:`KeyService.refresh`) probes again at once.
A key that is missing, disabled, pending import or pending deletion needs no probe: healthz
names the problem and the command that fixes it, never material or plaintext.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

from kms_operator.errors import KmsError
from kms_operator.store.records import KeyRecord, KeyState

from .nodekeys import PLUGIN_NAMESPACE, NodeKeys, key_id_text, reported_key_id
from .protocol import HEALTHZ_OK

#: How long a successful (or failed) probe of an unchanged key stands.
HEALTH_TTL_SECONDS = 5.0
_PROBE_SIZE = 32  # a DEK seed's size: what kube-apiserver encrypts


@dataclass(frozen=True, slots=True)
class Health:
    healthz: str
    #: Empty only when there is no key at all.
    key_id: str

    @property
    def ok(self) -> bool:
        return self.healthz == HEALTHZ_OK


@dataclass(frozen=True, slots=True)
class _Probe:
    record: KeyRecord
    at: float
    health: Health


class HealthCheck:
    """The health of the plugin's key ``name``, probed at most every few seconds."""

    def __init__(
        self,
        keys: NodeKeys,
        name: str,
        *,
        ttl: float = HEALTH_TTL_SECONDS,
    ) -> None:
        self._keys = keys
        self._name = name
        self._ttl = ttl
        self._lock = threading.Lock()
        self._last: _Probe | None = None

    def check(self) -> Health:
        record = self._keys.find(self._name)
        if record is None:
            return Health(
                f"no key {self._name!r} in the plugin's store: create it with "
                f"'kms-operator kms-plugin keys create --key {self._name}'",
                "",
            )
        problem = self._state_problem(record)
        if problem is not None:
            return Health(problem, reported_key_id(record))
        with self._lock:
            now = self._keys.service.clock.monotonic_ns() / 1e9
            last = self._last
            if last is not None and last.record is record and now - last.at < self._ttl:
                return last.health
            health = self._probe(record)
            self._last = _Probe(record, now, health)
            return health

    def _state_problem(self, record: KeyRecord) -> str | None:
        name, key_id, state = self._name, reported_key_id(record), record.state
        if state is KeyState.ENABLED:
            return None
        what = f"key {name} ({key_id}) is {state}"
        if state is KeyState.DISABLED:
            return f"{what}: enable it with 'kms-operator kms-plugin keys enable --key {name}'"
        if state is KeyState.PENDING_IMPORT:
            return (
                f"{what}: import its material with 'kms-operator kms-plugin keys import "
                f"--key {name} --material-file FILE'"
            )
        if state is KeyState.PENDING_DELETION:
            return f"{what} (deletion on {record.deletion_date}): it encrypts nothing"
        return f"{what}: it encrypts nothing"

    def _probe(self, record: KeyRecord) -> Health:
        service = self._keys.service
        key_id = reported_key_id(record)
        probe = secrets.token_bytes(_PROBE_SIZE)
        try:
            sealed = service.encrypt(PLUGIN_NAMESPACE, record.key_id, probe)
            opened = service.decrypt(sealed.ciphertext_blob)
        except KmsError as exc:
            return Health(
                f"key {self._name} ({key_id}): encrypt and decrypt fail: {exc.message}", key_id
            )
        if opened.plaintext != probe:
            return Health(
                f"key {self._name} ({key_id}): decrypt did not return what encrypt sealed",
                key_id,
            )
        return Health(HEALTHZ_OK, key_id_text(sealed.key_id, sealed.key_version))

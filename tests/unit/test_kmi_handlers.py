"""KeyMaterialImport's Kopf handlers without a cluster: a ``kopf.Body`` in, the status patch,
the error Kopf gets and the Events posted out, over a real key service on a SQLite store.

The cluster is faked at its edge: the Event poster (``Objects.post_event_on``), the key's
CustomerMasterKey object (``publish_key_change``), the material Secret and the list of
KeyMaterialImports (``Imports``), and the scheduler's wake-up.
"""

from __future__ import annotations

import base64
import os
import uuid
from typing import Any, cast

import kopf
import pytest
from tests.support.importing import Importer

from kms_operator.errors import InvalidRequest, StoreError
from kms_operator.keys.service import KeyService
from kms_operator.kube.imports import SecretValueMissing
from kms_operator.operator import outcomes
from kms_operator.operator.keymaterialimports import decisions, deletion, handlers, importing
from kms_operator.operator.keymaterialimports.views import ImportStatus
from kms_operator.operator.runtime import Runtime
from kms_operator.settings import Settings
from kms_operator.store.records import ImportParameters, KeyState, Origin

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("fast_wrapping_keys")]

NS = "team-a"


class FakeObjects:
    """The Events posted on any object, and the key's object as ``publish_key_change`` sees
    it (none: an Event naming the key, no status)."""

    def __init__(self) -> None:
        #: (kind, name, type, reason) of every Event posted.
        self.events: list[tuple[str, str, str, str]] = []

    def post_event_on(
        self,
        kind: str,
        namespace: str,
        name: str,
        uid: str | None,
        *,
        type_: str,
        reason: str,
        message: str,
    ) -> None:
        self.events.append((kind, name, type_, reason))

    def get_cmk(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None


class FakeImports:
    """The material Secrets (by name) and the KeyMaterialImports of the namespace."""

    def __init__(self) -> None:
        self.secrets: dict[str, bytes] = {}
        self.items: list[dict[str, Any]] = []

    def read_secret_value(self, namespace: str, name: str, key: str) -> bytes:
        if name not in self.secrets:
            raise SecretValueMissing(f"Secret {namespace}/{name} does not exist")
        return self.secrets[name]

    def list_kmis(self, namespace: str) -> list[dict[str, Any]]:
        return self.items


class FakeScheduler:
    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


class Cluster:
    """One KeyMaterialImport object and what the handlers wrote about it."""

    def __init__(self, service: KeyService, imports: FakeImports) -> None:
        self.service = service
        self.objects = FakeObjects()
        self.imports = imports
        self.scheduler = FakeScheduler()
        self.runtime = Runtime(
            service=service,
            objects=cast(Any, self.objects),
            scheduler=cast(Any, self.scheduler),
            settings=Settings(),
            connection=cast(Any, None),
            audit=cast(Any, None),
        )
        self.memo = kopf.Memo(runtime=self.runtime)
        self.generation = 1
        self.spec: dict[str, Any] = {"keyRef": {"name": "byok"}, "wrappingKeySpec": "RSA_2048"}
        self.status: dict[str, Any] = {}

    def body(self, **meta: Any) -> kopf.Body:
        return kopf.Body(
            {
                "apiVersion": "kms.cmk.dev/v1alpha1",
                "kind": "KeyMaterialImport",
                "metadata": {
                    "namespace": NS,
                    "name": "imp",
                    "uid": "kmi-uid-1",
                    "generation": self.generation,
                    **meta,
                },
                "spec": self.spec,
                "status": self.status,
            }
        )

    def change_spec(self, **changes: Any) -> None:
        self.spec = {**self.spec, **changes}
        self.generation += 1

    async def reconcile(self) -> dict[str, Any]:
        """Run the create/update/resume handler; the status patch, also merged into status."""
        patch = kopf.Patch()
        try:
            await handlers.reconcile_handler(body=self.body(), patch=patch, memo=self.memo)
        finally:
            self.status = {**self.status, **dict(patch.get("status") or {})}
        return dict(patch.get("status") or {})

    def events_on_import(self) -> list[tuple[str, str]]:
        return [(e[2], e[3]) for e in self.objects.events if e[0] == "KeyMaterialImport"]

    def wrapped(self, material: bytes) -> str:
        """``material`` wrapped with the public key in status, as base64 for the spec."""
        params = ImportParameters(
            token=self.status["importToken"],
            key_id=uuid.UUID(self.status["keyId"]),
            wrapping_algorithm="RSAES_OAEP_SHA_256",
            wrapping_key_spec="RSA_2048",
            public_key_pem=self.status["wrappingPublicKey"],
            expires_at=self.service.clock.now(),
        )
        return base64.b64encode(Importer.wrap(params, material)).decode()


@pytest.fixture
def imports(monkeypatch: pytest.MonkeyPatch) -> FakeImports:
    fake = FakeImports()
    for module in (importing, deletion):
        monkeypatch.setattr(module.Imports, "sharing", classmethod(lambda cls, objects: fake))
    return fake


@pytest.fixture
def cluster(service: KeyService, imports: FakeImports) -> Cluster:
    return Cluster(service, imports)


def _external_key(service: KeyService, name: str = "byok") -> uuid.UUID:
    record = service.create_key(
        NS, name, origin=Origin.EXTERNAL, namespace_uid="ns-uid", object_uid=f"o-{name}"
    )
    return record.key_id


def _condition(status: dict[str, Any], kind: str = "Ready") -> dict[str, Any]:
    return next((c for c in status.get("conditions") or () if c["type"] == kind), {})


async def test_waiting_publishes_the_parameters_and_says_what_to_do(cluster: Cluster) -> None:
    key_id = _external_key(cluster.service)

    status = await cluster.reconcile()

    assert status["phase"] == "WaitingForMaterial" and status["observedGeneration"] == 1
    assert status["keyId"] == str(key_id) and status["importToken"].startswith("kmsit1_")
    assert status["wrappingPublicKey"].startswith("-----BEGIN PUBLIC KEY-----")
    ready = _condition(status)
    assert (ready["status"], ready["reason"]) == ("False", decisions.WAITING_FOR_MATERIAL)
    assert cluster.events_on_import() == [("Normal", decisions.WAITING_FOR_MATERIAL)]

    again = await cluster.reconcile()  # a resume re-checks the parameters' date
    assert again["phase"] == "WaitingForMaterial"
    assert "importToken" not in again  # parameters are issued once
    assert cluster.events_on_import() == [("Normal", decisions.WAITING_FOR_MATERIAL)]


async def test_imported_material_is_ready_synced_and_announced(cluster: Cluster) -> None:
    key_id = _external_key(cluster.service)
    await cluster.reconcile()
    cluster.change_spec(
        importToken=cluster.status["importToken"],
        encryptedKeyMaterial=cluster.wrapped(os.urandom(32)),
    )

    status = await cluster.reconcile()

    assert (status["phase"], status["keyVersion"]) == ("Imported", 1)
    assert status["observedGeneration"] == 2
    assert _condition(status)["status"] == "True"
    assert _condition(status)["reason"] == decisions.MATERIAL_IMPORTED
    assert (_condition(status, "Synced")["status"], _condition(status, "Synced")["reason"]) == (
        "True",
        "Applied",
    )
    assert cluster.service.get(key_id).state is KeyState.ENABLED
    assert cluster.scheduler.wakes == 1
    assert cluster.events_on_import()[-1] == ("Normal", decisions.MATERIAL_IMPORTED)
    assert ("CustomerMasterKey", "byok", "Normal", decisions.MATERIAL_IMPORTED) in (
        cluster.objects.events
    )

    assert await cluster.reconcile() == {}  # a restart: settled, nothing written


async def test_a_refused_import_settles_until_the_spec_changes(cluster: Cluster) -> None:
    _external_key(cluster.service)
    await cluster.reconcile()
    cluster.change_spec(importToken=cluster.status["importToken"], encryptedKeyMaterial="AAAA")

    status = await cluster.reconcile()  # no error for Kopf: the spec must change

    assert status["phase"] == "Failed"
    assert _condition(status)["reason"] == decisions.INCORRECT_KEY_MATERIAL
    synced = _condition(status, "Synced")
    assert (synced["status"], synced["reason"], synced["observedGeneration"]) == (
        "False",
        decisions.INCORRECT_KEY_MATERIAL,
        2,
    )
    assert ImportStatus.parse(cluster.status).refused_generation == 2
    assert cluster.events_on_import()[-1] == ("Warning", decisions.INCORRECT_KEY_MATERIAL)
    events = len(cluster.objects.events)

    assert await cluster.reconcile() == {}  # settled: a restart changes nothing
    assert len(cluster.objects.events) == events

    cluster.change_spec(encryptedKeyMaterial=cluster.wrapped(os.urandom(32)))
    assert (await cluster.reconcile())["phase"] == "Imported"


async def test_a_missing_key_is_retried_and_said_once(cluster: Cluster) -> None:
    for _ in range(2):
        with pytest.raises(kopf.TemporaryError) as raised:
            await cluster.reconcile()
        assert raised.value.delay == decisions.KEY_RETRY_DELAY
    assert cluster.status["phase"] == "Failed"
    assert _condition(cluster.status)["reason"] == decisions.KEY_NOT_FOUND
    assert not _condition(cluster.status, "Synced")  # not refused: it never settles
    assert cluster.events_on_import() == [("Warning", decisions.KEY_NOT_FOUND)]

    _external_key(cluster.service)
    assert (await cluster.reconcile())["phase"] == "WaitingForMaterial"


async def test_a_key_that_cannot_take_material_is_refused_for_good(cluster: Cluster) -> None:
    cluster.service.create_key(NS, "byok", namespace_uid="ns-uid", object_uid="o-byok")

    status = await cluster.reconcile()

    assert status["phase"] == "Failed"
    assert _condition(status)["reason"] == decisions.KEY_NOT_EXTERNAL
    assert _condition(status, "Synced")["status"] == "False"
    assert "wrappingPublicKey" not in status
    assert await cluster.reconcile() == {}


async def test_a_material_secret_not_there_yet_is_waited_for(cluster: Cluster) -> None:
    _external_key(cluster.service)
    await cluster.reconcile()
    cluster.change_spec(
        importToken=cluster.status["importToken"],
        encryptedKeyMaterialSecretRef={"name": "wrapped"},
    )

    with pytest.raises(kopf.TemporaryError) as raised:
        await cluster.reconcile()

    assert raised.value.delay == decisions.SECRET_RETRY_DELAY
    assert cluster.status["phase"] == "WaitingForMaterial"
    assert _condition(cluster.status)["reason"] == decisions.MATERIAL_SECRET_NOT_FOUND
    assert cluster.events_on_import()[-1] == ("Warning", decisions.MATERIAL_SECRET_NOT_FOUND)

    cluster.imports.secrets["wrapped"] = base64.b64decode(cluster.wrapped(os.urandom(32)))
    assert (await cluster.reconcile())["phase"] == "Imported"


async def test_domain_errors_map_to_kopf_once(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    _external_key(cluster.service)

    def busy(*args: Any) -> None:
        raise StoreError("the store is busy")

    monkeypatch.setattr(cluster.service, "create_import_parameters", busy)
    with pytest.raises(kopf.TemporaryError) as temporary:
        await cluster.reconcile()
    assert temporary.value.delay == outcomes.RETRY_DELAY

    def refuse(*args: Any) -> None:
        raise InvalidRequest("no parameters for you")

    monkeypatch.setattr(cluster.service, "create_import_parameters", refuse)
    with pytest.raises(kopf.PermanentError, match="no parameters for you"):
        await cluster.reconcile()
    assert cluster.status == {} and cluster.objects.events == []


async def test_deleting_the_import_deletes_its_material(cluster: Cluster) -> None:
    key_id = _external_key(cluster.service)
    await cluster.reconcile()
    cluster.change_spec(
        importToken=cluster.status["importToken"],
        encryptedKeyMaterial=cluster.wrapped(os.urandom(32)),
    )
    await cluster.reconcile()
    wakes = cluster.scheduler.wakes

    await handlers.delete(body=cluster.body(), memo=cluster.memo)

    assert cluster.service.get(key_id).state is KeyState.PENDING_IMPORT
    assert cluster.events_on_import()[-1] == ("Normal", decisions.MATERIAL_DELETED)
    assert cluster.scheduler.wakes == wakes + 1


def test_the_expiry_daemon_watches_waiting_and_dated_imports() -> None:
    def watched(status: dict[str, Any], spec: dict[str, Any]) -> bool:
        body = kopf.Body({"metadata": {"name": "imp"}, "spec": spec, "status": status})
        return handlers.expiry_watched(status=body.status, spec=body.spec)

    waiting = {"phase": "WaitingForMaterial", "parametersExpireAt": "2026-01-02T12:00:00Z"}
    assert watched(waiting, {})
    assert not watched({**waiting, "phase": "Failed"}, {})
    imported = {"phase": "Imported", "keyId": str(uuid.UUID(int=1)), "keyVersion": 1}
    assert watched(imported, {"validTo": "2026-02-01T00:00:00Z"})
    assert not watched(imported, {})
    assert not watched({**imported, "phase": "Expired"}, {"validTo": "2026-02-01T00:00:00Z"})

"""Deleting a KeyMaterialImport deletes only its own key's material (issue 8, item 4).

``status.keyId`` can be written by anyone allowed to patch the status subresource; before this
fix the deletion handler deleted the material of whatever key it named. Here the handler's
synchronous part runs over a real key service, with the Kubernetes calls faked at their edge.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, cast

import pytest
from tests.support.importing import Importer

from kms_operator.keys.service import KeyService
from kms_operator.operator.keymaterialimports import decisions as kmi
from kms_operator.operator.keymaterialimports import deletion, importing
from kms_operator.operator.runtime import Runtime
from kms_operator.store.records import KeyState, Origin

pytestmark = pytest.mark.unit

NS = "team-a"


class FakeImports:
    """The KeyMaterialImport objects (``list_kmis``) and the Events posted on them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.items: list[dict[str, Any]] = []

    def list_kmis(self, namespace: str) -> list[dict[str, Any]]:
        return [i for i in self.items if i["metadata"]["namespace"] == namespace]

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
        assert kind == "KeyMaterialImport"
        self.events.append((type_, reason, message))


@pytest.fixture
def imports(monkeypatch: pytest.MonkeyPatch) -> FakeImports:
    fake = FakeImports()
    monkeypatch.setattr(deletion.Imports, "sharing", classmethod(lambda cls, objects: fake))
    monkeypatch.setattr(importing, "publish_key_change", lambda *args, **kwargs: None)
    return fake


def _runtime(service: KeyService, imports: FakeImports) -> Runtime:
    return Runtime(
        service=service,
        objects=cast(Any, imports),
        scheduler=cast(Any, None),
        settings=cast(Any, None),
        connection=cast(Any, None),
        audit=cast(Any, None),
    )


def _imported(service: KeyService, importer: Importer, name: str, namespace: str = NS) -> uuid.UUID:
    record = service.create_key(
        namespace, name, origin=Origin.EXTERNAL, namespace_uid=f"uid-{namespace}",
        object_uid=f"o-{name}",
    )  # fmt: skip
    importer.import_material(record.key_id, os.urandom(32))
    assert service.get(record.key_id).state is KeyState.ENABLED
    return record.key_id


def _kmi(key: str, key_id: uuid.UUID, *, namespace: str = NS, name: str = "mine") -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{name}"},
        "spec": {"keyRef": {"name": key}},
        "status": {
            "keyId": str(key_id),
            "keyVersion": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Imported"}],
        },
    }


def test_deleting_an_import_deletes_its_own_keys_material(
    service: KeyService, importer: Importer, imports: FakeImports
) -> None:
    own = _imported(service, importer, "byok")
    assert deletion.delete_material(_runtime(service, imports), _kmi("byok", own))
    assert service.get(own).state is KeyState.PENDING_IMPORT
    assert [e[1] for e in imports.events] == [kmi.MATERIAL_DELETED]


def test_a_status_naming_another_key_of_the_namespace_deletes_nothing(
    service: KeyService, importer: Importer, imports: FakeImports
) -> None:
    _imported(service, importer, "byok")
    victim = _imported(service, importer, "victim")

    assert not deletion.delete_material(_runtime(service, imports), _kmi("byok", victim))

    assert service.get(victim).state is KeyState.ENABLED
    assert [(e[0], e[1]) for e in imports.events] == [("Warning", kmi.NOT_OWN_KEY)]
    assert str(victim) in imports.events[0][2] and "no material was deleted" in imports.events[0][2]


def test_a_status_naming_a_key_of_another_namespace_deletes_nothing(
    service: KeyService, importer: Importer, imports: FakeImports
) -> None:
    # Same key name in another namespace: only the namespace differs.
    victim = _imported(service, importer, "byok", namespace="team-b")

    assert not deletion.delete_material(_runtime(service, imports), _kmi("byok", victim))

    assert service.get(victim).state is KeyState.ENABLED
    assert [e[1] for e in imports.events] == [kmi.NOT_OWN_KEY]


def test_a_detached_key_keeps_its_material(
    service: KeyService, importer: Importer, imports: FakeImports
) -> None:
    old = _imported(service, importer, "byok")
    service.observe_namespace(NS, "uid-of-a-new-namespace")  # the namespace was re-created
    assert service.get(old).is_detached

    assert not deletion.delete_material(_runtime(service, imports), _kmi("byok", old))

    assert service.get(old).versions[0].state.value == "Enabled"
    assert [e[1] for e in imports.events] == [kmi.NOT_OWN_KEY]


def test_a_status_naming_no_key_id_deletes_nothing(
    service: KeyService, importer: Importer, imports: FakeImports
) -> None:
    _imported(service, importer, "byok")
    body = _kmi("byok", uuid.UUID(int=1))
    body["status"]["keyId"] = "not-a-uuid"
    assert not deletion.delete_material(_runtime(service, imports), body)
    assert imports.events == []

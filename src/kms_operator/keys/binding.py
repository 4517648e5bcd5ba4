"""The binding verbs: which key a CustomerMasterKey object holds (DESIGN.md section 5).

A key is bound to the UIDs of its namespace and object. A namespace or object created again
with the same name has new UIDs, so it never inherits an older key: the older key is
*detached* (it answers no name or alias, and keeps its own deletion schedule) unless the new
object claims it by id.
"""

from __future__ import annotations

import logging
import uuid

from kms_operator.errors import KeyBoundElsewhere
from kms_operator.store.records import KeyRecord, KeyState

from .base import ServiceBase

log = logging.getLogger(__name__)


class BindingVerbs(ServiceBase):
    def bind(
        self,
        namespace: str,
        name: str,
        *,
        namespace_uid: str,
        object_uid: str,
        claimed_key_id: uuid.UUID | None = None,
    ) -> KeyRecord | None:
        """The key the object ``namespace/name`` (with these UIDs) holds; None: it holds none.

        A key passes to a new object only within the same namespace (same UID), and only when
        it is the same object or the object claims the key by id (``claimed_key_id``: the
        ``kms.cmk.dev/key-id`` annotation the operator puts on objects it recreates, or the
        object's own ``status.keyId``). A key of an earlier namespace of the same name is
        detached and None is returned, so the new tenant gets a new key. A key of an earlier
        object in the same namespace that the new one does not claim is
        :class:`KeyBoundElsewhere`: nothing is created or adopted without the user's word.
        Keys written before schema 2 carry no UIDs; they are adopted only by a claim.
        """
        with self._index.writing():
            self.observe_namespace(namespace, namespace_uid)
            record = self.find(namespace, name)
            if record is None and claimed_key_id is not None:
                claimed = self._index.get(claimed_key_id)
                if (
                    claimed is not None
                    and claimed.is_detached
                    and claimed.state is not KeyState.DESTROYED
                    and (claimed.namespace, claimed.name) == (namespace, name)
                    and claimed.namespace_uid in (None, namespace_uid)
                ):
                    record = claimed
            if record is None:
                return None
            claimed_here = claimed_key_id == record.key_id
            if record.object_uid != object_uid and not claimed_here:
                if record.object_uid is None:
                    # Written before schema 2: only the object that holds its id may adopt it.
                    self._detach(record, "unclaimed after the upgrade to schema 2")
                    return None
                raise KeyBoundElsewhere(
                    f"key {record.key_id} ({record.state}) belongs to an earlier object named "
                    f"{namespace}/{name}; annotate kms.cmk.dev/key-id={record.key_id} to take "
                    "it over"
                )
            if (record.namespace_uid, record.object_uid, record.detached_at) == (
                namespace_uid,
                object_uid,
                None,
            ):
                return record
            log.info(
                "key %s bound to object %s of %s/%s", record.key_id, object_uid, namespace, name
            )
            return self._save(
                record.evolve(namespace_uid=namespace_uid, object_uid=object_uid, detached_at=None)
            )

    def observe_namespace(self, namespace: str, uid: str) -> list[KeyRecord]:
        """Record the namespace's current UID; detach and return the keys of an earlier one."""
        with self._index.writing():
            if self._index.namespace_uid(namespace) == uid:
                return []
            self._index.remember_namespace(namespace, uid)
            stale = [
                r
                for r in self._index.records()
                if r.namespace == namespace
                and r.namespace_uid not in (None, uid)
                and not r.is_detached
                and r.state is not KeyState.DESTROYED
            ]
            return [self._detach(r, "its namespace was deleted and created again") for r in stale]

    def _detach(self, record: KeyRecord, why: str) -> KeyRecord:
        log.warning(
            "key %s of %s/%s detached (%s): it answers no name or alias and keeps its schedule",
            record.key_id,
            record.namespace,
            record.name,
            why,
        )
        return self._save(record.evolve(detached_at=self.clock.now(), aliases=()))

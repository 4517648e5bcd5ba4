"""A CustomerMasterKey cluster in memory, and the operator's Runtime over it (no API server).

:class:`FakeObjects` stands for :class:`~kms_operator.kube.objects.Objects`: objects,
namespaces, Events and status patches are kept in dicts and lists the tests read, and any
method can be made to fail for its next calls (``failures``), as an API server going away
would. :func:`make_runtime` builds the Runtime the handlers find in Kopf's memo, over a real
:class:`~kms_operator.keys.service.KeyService`.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

from kms_operator.contract import CMK_KIND, SCHEDULED_DELETION_FINALIZER
from kms_operator.keys.service import KeyService
from kms_operator.kube.client import ConnectionParameters
from kms_operator.kube.objects import NamespaceInfo
from kms_operator.operator.runtime import Runtime
from kms_operator.operator.scheduling import Backoff
from kms_operator.settings import Settings

NS = "team-a"


class ApiError(Exception):
    """What the kubernetes client raises: an HTTP status and reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"({status}) {reason}")
        self.status, self.reason = status, reason


class FakeObjects:
    """CustomerMasterKeys, namespaces and Events in memory, with failures on demand."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.namespaces: dict[str, NamespaceInfo] = {NS: NamespaceInfo("ns-uid-1", False)}
        self.events: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        #: method name -> how many of its next calls raise
        self.failures: dict[str, int] = {}
        self._uids = (f"obj-uid-{n}" for n in itertools.count(1))

    def _maybe_fail(self, method: str) -> None:
        if self.failures.get(method, 0) > 0:
            self.failures[method] -= 1
            raise ApiError(503, "Service Unavailable")

    def add(self, name: str, spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
        body = {
            "metadata": {
                "name": name,
                "namespace": NS,
                "uid": next(self._uids),
                "resourceVersion": "1",
                "generation": 1,
                "finalizers": [SCHEDULED_DELETION_FINALIZER],
                **meta,
            },
            "spec": spec or {},
            "status": {},
        }
        self.objects[NS, name] = body
        return body

    def delete(self, name: str) -> dict[str, Any]:
        body = self.objects[NS, name]
        body["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
        return body

    def reasons(self) -> list[str]:
        return [e["reason"] for e in self.events]

    # -- the Objects interface --------------------------------------------------------------

    def namespace_info(self, namespace: str) -> NamespaceInfo | None:
        self._maybe_fail("namespace_info")
        return self.namespaces.get(namespace)

    def get_cmk(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._maybe_fail("get_cmk")
        return self.objects.get((namespace, name))

    def list_cmks(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return [b for (ns, _), b in self.objects.items() if namespace in (None, ns)]

    def remove_finalizer(self, body: dict[str, Any], finalizer: str) -> bool:
        self._maybe_fail("remove_finalizer")
        meta = body["metadata"]
        current = self.objects.get((meta["namespace"], meta["name"]))
        if current is None or finalizer not in current["metadata"]["finalizers"]:
            return False
        current["metadata"]["finalizers"].remove(finalizer)
        if current["metadata"].get("deletionTimestamp") and not current["metadata"]["finalizers"]:
            del self.objects[meta["namespace"], meta["name"]]
        return True

    def create_cmk(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._maybe_fail("create_cmk")
        if self.namespaces[namespace].terminating:
            raise ApiError(403, "Forbidden")
        name = body["metadata"]["name"]
        if (namespace, name) in self.objects:
            raise ApiError(409, "Conflict")
        created = {**body, "metadata": {**body["metadata"], "uid": next(self._uids)}}
        created["metadata"].setdefault("finalizers", [])
        self.objects[namespace, name] = created
        return created

    def patch_cmk_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._maybe_fail("patch_cmk_status")
        self.statuses.append(status)
        if (namespace, name) in self.objects:
            self.objects[namespace, name]["status"].update(status)

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
        assert kind == CMK_KIND
        self._maybe_fail("post_event_on")
        self.events.append(
            {"name": name, "uid": uid, "type": type_, "reason": reason, "message": message}
        )


class Wakes:
    """The scheduler as handlers see it: they wake it when they change a date."""

    def __init__(self) -> None:
        self.count = 0

    def wake(self) -> None:
        self.count += 1


class UnusedAudit:
    """CMK handlers write no audit lines (only crypto on keys does)."""

    def write(self, record: object) -> None:
        raise AssertionError("a CMK handler wrote an audit line")

    def close(self) -> None:
        pass


def make_runtime(
    service: KeyService, objects: FakeObjects, slept: list[float] | None = None
) -> Runtime:
    """The handlers' Runtime over ``service`` and ``objects``; back-off sleeps are recorded in
    ``slept`` and take no time."""

    async def sleep(seconds: float) -> None:
        if slept is not None:
            slept.append(seconds)
        await asyncio.sleep(0)

    return Runtime(
        service=service,
        objects=objects,  # type: ignore[arg-type]
        scheduler=Wakes(),  # type: ignore[arg-type]
        settings=Settings(store_path=Path("unused")),
        connection=ConnectionParameters("https://unused", None, False, None, None, None, None),
        audit=UnusedAudit(),
        backoff=Backoff(first=1, cap=4, sleep=sleep),
    )

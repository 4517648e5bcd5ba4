"""The custom resources the lifecycle operations write, and waiting for the operator.

The lifecycle operations (:mod:`.lifecycle_operations`, :mod:`.import_operations`) act on the
CustomerMasterKey and KeyMaterialImport objects, never on the store around them: the cluster
stays the source of truth, GitOps sees the change, and the operator applies it as it applies a
``kubectl`` user's. :class:`Resources` is the port they write through (synchronous calls, run in
a thread); :mod:`kms_operator.kube.resources` implements it over the Kubernetes API. Then they
wait until the operator (same process) has made the change in the key service, and answer
from it.

The port's refusals are domain errors: ``NotFound`` (the object or its namespace is gone),
``AlreadyExists`` (a create whose name is taken), ``Conflict`` (a precondition failed: the
object changed or was replaced since it was read), ``InvalidRequest`` (the API server refused
the body).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from kms_operator.errors import Conflict

from .calls import AwsCall, Members
from .wire import DependencyTimeout

#: A custom object as the API server has it (``metadata``, ``spec``, ``status``).
Body = dict[str, Any]
T = TypeVar("T")

#: Attempts of a read-modify-write that keeps meeting a change made meanwhile, and the pause
#: before the second (doubled each time): the operator itself changes an object several times
#: in a row (status, progress annotations, finalizer) while it handles an event.
MAX_CONFLICTS = 8
CONFLICT_PAUSE_S = 0.05


class Resources(Protocol):
    """The writes (and the reads they need) of the lifecycle operations; synchronous."""

    def get_cmk(self, namespace: str, name: str) -> Body | None:
        """The CustomerMasterKey, or None when there is none by that name."""

    def create_cmk(self, namespace: str, body: Body) -> Body:
        """Create it; the created object (with its UID) comes back."""

    def patch_cmk(self, namespace: str, name: str, patch: Body) -> Body:
        """A JSON merge patch; a ``metadata.resourceVersion`` in it is a precondition."""

    def delete_cmk(self, namespace: str, name: str, uid: str) -> None:
        """Delete the object if it is still the one of ``uid`` (``Conflict`` otherwise)."""

    def list_kmis(self, namespace: str) -> list[Body]:
        """Every KeyMaterialImport of the namespace."""

    def get_kmi(self, namespace: str, name: str) -> Body | None: ...

    def create_kmi(self, namespace: str, body: Body) -> Body: ...

    def patch_kmi(self, namespace: str, name: str, patch: Body) -> Body: ...

    def delete_kmi(self, namespace: str, name: str, uid: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Patience:
    """How the operations wait for the operator: the key service is polled (memory reads)
    every ``interval``, objects (API reads) every ``api_interval``, for at most ``timeout``."""

    interval: float = 0.05
    api_interval: float = 0.2
    timeout: float = 30.0


class KeyObjects:
    """The port as the operations use it: its calls in a thread, and the waiting."""

    __slots__ = ("patience", "resources")

    def __init__(self, resources: Resources, patience: Patience) -> None:
        self.resources = resources
        self.patience = patience

    async def run(self, method: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(functools.partial(method, *args))

    async def until(
        self, probe: Callable[[], Awaitable[T | None]], what: str, *, reads_objects: bool = False
    ) -> T:
        """The first non-None answer of ``probe``; ``DependencyTimeout`` saying ``what`` did not
        happen once :attr:`Patience.timeout` has passed (the operator may still do it)."""
        interval = self.patience.api_interval if reads_objects else self.patience.interval
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.patience.timeout
        while True:
            found = await probe()
            if found is not None:
                return found
            if loop.time() >= deadline:
                raise DependencyTimeout(
                    f"the operator did not {what} within {self.patience.timeout:g} s; it may "
                    "still do so (see the object's status and Events)"
                )
            await asyncio.sleep(interval)

    async def change(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run a read-modify-write ``attempt`` again while it meets a ``Conflict``."""
        for retry in range(MAX_CONFLICTS - 1):
            try:
                return await attempt()
            except Conflict:
                await asyncio.sleep(CONFLICT_PAUSE_S * 2**retry)
        return await attempt()


#: A lifecycle operation: what :data:`.calls.Operation` is, with the port to write through.
LifecycleOperation = Callable[[AwsCall, KeyObjects], Awaitable[Members]]

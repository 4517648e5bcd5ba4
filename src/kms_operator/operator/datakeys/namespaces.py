"""Each namespace's UID, which binds keys to it, read through the API and trusted briefly."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from kms_operator.kube.objects import NamespaceInfo

#: Seconds a namespace's UID is trusted before it is read again.
NAMESPACE_UID_TTL = 5.0
#: Namespaces whose UID is remembered at once (the least recently used is forgotten first).
NAMESPACE_UID_ENTRIES = 1024


class NamespaceUids:
    """Each namespace's UID, read through ``lookup`` and trusted for ``ttl`` seconds.

    At most ``entries`` namespaces are remembered; a namespace that does not exist is never
    remembered. ``clock`` is monotonic seconds (injected in tests). Thread-safe: the
    reconciliations of several DataKeys run in threads at once.
    """

    def __init__(
        self,
        lookup: Callable[[str], NamespaceInfo | None],
        *,
        ttl: float = NAMESPACE_UID_TTL,
        entries: int = NAMESPACE_UID_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._entries = entries
        self._clock = clock
        self._known: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def uid(self, namespace: str) -> str | None:
        """The namespace's UID, or None when it does not exist."""
        now = self._clock()
        with self._lock:
            known = self._known.get(namespace)
            if known is not None and now - known[1] < self._ttl:
                self._known.move_to_end(namespace)
                return known[0]
        info = self._lookup(namespace)  # an API call: outside the lock
        with self._lock:
            if info is None:
                self._known.pop(namespace, None)
                return None
            self._known[namespace] = (info.uid, now)
            self._known.move_to_end(namespace)
            while len(self._known) > self._entries:
                self._known.popitem(last=False)
        return info.uid

"""Small TTL caches for authentication and authorization answers, and single-flight loads.

Concurrent misses on the same key share one load (:class:`SingleFlight`), so a burst of
requests with a new token costs one TokenReview, not one per request. Failed loads are not
cached. Every cache has a size bound; the oldest entries go first.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """Concurrent calls for one key share the first caller's load (its result or error)."""

    def __init__(self) -> None:
        self._loading: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._loading)

    async def run(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await load()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) get it through shield
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del self._loading[key]


class TtlCache(Generic[K, V]):
    def __init__(
        self,
        ttl_seconds: float,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._flights: SingleFlight[K, V] = SingleFlight()
        #: Loads done (misses), for tests and the benchmark.
        self.loads = 0

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: K, default: object) -> V | object:
        """The cached value, or ``default`` on a miss (the fast path: no coroutine)."""
        entry = self._entries.get(key)
        if entry is None or self._clock() >= entry[0]:
            return default
        return entry[1]

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        return value

    def put(self, key: K, value: V) -> None:
        if self.ttl_seconds <= 0:
            return
        self._entries[key] = (self._clock() + self.ttl_seconds, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        entry = self._entries.get(key)
        if entry is not None and self._clock() < entry[0]:
            return entry[1]

        async def load_and_keep() -> V:
            self.loads += 1
            value = await load()
            self.put(key, value)
            return value

        return await self._flights.run(key, load_and_keep)

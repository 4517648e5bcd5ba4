"""Prometheus metrics of the API, in a registry of its own (one per app, so tests do not collide).

* ``kms_api_requests_total{operation, outcome}``: calls by outcome (allowed, denied, error);
* ``kms_api_request_duration_seconds{operation}``: latency, from the request to the answer;
* ``kms_keys{state}``: keys by lifecycle state, computed at scrape time from the service.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from kms_operator.store.records import KeyRecord, KeyState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTCOMES = ("allowed", "denied", "error")
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _KeysCollector:
    def __init__(self, keys: Callable[[], Iterable[KeyRecord]]) -> None:
        self._keys = keys

    def collect(self) -> Iterator[GaugeMetricFamily]:
        tally = Tally(record.state for record in self._keys())
        family = GaugeMetricFamily("kms_keys", "Customer master keys by state.", labels=["state"])
        for state in KeyState:
            family.add_metric([state.value], float(tally.get(state, 0)))
        yield family


class ApiMetrics:
    def __init__(self, keys: Callable[[], Iterable[KeyRecord]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "kms_api_requests",
            "API calls by operation and outcome.",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "kms_api_request_duration_seconds",
            "API call latency by operation.",
            ["operation"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_KeysCollector(keys))
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def observe(self, operation: str, outcome: str, seconds: float) -> None:
        children = self._children.get((operation, outcome))
        if children is None:
            children = (
                self._requests.labels(operation, outcome),
                self._latency.labels(operation),
            )
            self._children[(operation, outcome)] = children
        counter, histogram = children
        counter.inc()
        histogram.observe(seconds)

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))

"""How long kube-apiserver takes to list N Secrets after a restart: kms v2 against identity.

Two local control planes (etcd + kube-apiserver) in this run, one writing Secrets through a
kms v2 provider on the real ``kms-operator kms-plugin serve`` (a process with its own store
and root key on a unix socket), the other with the identity provider (stored as they come).
Both get the same N Secrets through the API. Then, round after round, alternating the two,
kube-apiserver is restarted alone (etcd keeps its data; caches start cold) and timed:

- ``ready``: from the restart (the old process's stop included) to ``/readyz`` ok;
- ``list``: from ready to the first complete ``GET /api/v1/namespaces/bench/secrets``, served
  from the watch cache that kube-apiserver fills from etcd (decrypting every Secret) as it
  starts;
- ``total``: their sum, what a client waiting for its first list sees;
- ``etcd``: the same list at the exact revision the Secrets were created at, median of 3: older
  than the new watch cache, it is read from etcd (``apiserver_storage_list_total`` counts it
  with ``storage="etcd"``), every Secret decoded and decrypted in the request.

    .venv/bin/python bench/bench_kms_apiserver.py [--count 2000] [--rounds 3]

kms v2 does not ask the plugin for one Decrypt per Secret: kube-apiserver writes under one DEK
seed from its start until the key id changes and caches decrypted seeds by their ciphertext
(the run prints how many seeds the Secrets are under, and the Decrypt calls each restarted
kube-apiserver made, from its ``apiserver_envelope_encryption_kms_operations_latency_seconds``
metric: a few, from lookups that missed the cache at once); the rest is HKDF and AES-GCM
inside kube-apiserver.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client

# The plugin process and the EncryptionConfiguration come from the tests' helpers (one harness).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.encryption_fixtures import (
    IDENTITY_PROVIDER,
    admin_client,
    encrypted_control_plane,
    etcd_values,
    kms_v2_provider,
    stored_encrypted_object,
    write_encryption_config,
)
from tests.support.kmsplugin import PluginProcess

from kms_operator.devcluster.controlplane import LocalControlPlane
from kms_operator.devcluster.processes import http_get

NAMESPACE = "bench"
KMS_PROVIDER = "kms-operator"


@dataclass
class Timings:
    ready: list[float] = field(default_factory=list)
    listing: list[float] = field(default_factory=list)
    from_etcd: list[float] = field(default_factory=list)

    def total(self) -> list[float]:
        return [r + s for r, s in zip(self.ready, self.listing, strict=True)]


def _create_secrets(plane: LocalControlPlane, count: int, workers: int) -> None:
    with admin_client(plane) as api:
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))

        def create(i: int) -> None:
            core.create_namespaced_secret(
                NAMESPACE,
                client.V1Secret(
                    metadata=client.V1ObjectMeta(name=f"secret-{i:05d}"),
                    data={"password": base64.b64encode(f"value-{i}".encode()).decode()},
                ),
            )

        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(create, range(count)))


def _list_all(
    plane: LocalControlPlane, context: ssl.SSLContext, count: int, query: str = ""
) -> float:
    """Seconds until one list returns all ``count`` Secrets (retried while it does not)."""
    start = time.monotonic()
    url = f"{plane.server}/api/v1/namespaces/{NAMESPACE}/secrets{query}"
    while True:
        status, body = http_get(url, context, timeout=120)
        if status == 200 and len(json.loads(body)["items"]) == count:
            return time.monotonic() - start
        if time.monotonic() - start > 300:
            raise RuntimeError(f"no complete list in 300 s: HTTP {status} {body[:200]!r}")
        time.sleep(0.05)


def _admin_context(plane: LocalControlPlane) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(plane.ca_file))
    context.load_cert_chain(str(plane.client_cert_file), str(plane.client_key_file))
    return context


def _list_revision(plane: LocalControlPlane) -> str:
    with admin_client(plane) as api:
        listed = client.CoreV1Api(api).list_namespaced_secret(NAMESPACE, limit=1)
        revision: str = listed.metadata.resource_version
        return revision


def _plugin_decrypts(plane: LocalControlPlane) -> int:
    """Decrypt calls this kube-apiserver process made to its kms v2 plugin (its own metric)."""
    status, body = http_get(f"{plane.server}/metrics", _admin_context(plane), timeout=30)
    if status != 200:
        raise RuntimeError(f"/metrics: HTTP {status}")
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in body.decode().splitlines()
        if line.startswith("apiserver_envelope_encryption_kms_operations_latency_seconds_count")
        and "Decrypt" in line
    )


def _restart_and_list(
    plane: LocalControlPlane, count: int, revision: str, timings: Timings
) -> None:
    start = time.monotonic()
    plane.restart_apiserver()
    timings.ready.append(time.monotonic() - start)
    context = _admin_context(plane)
    timings.listing.append(_list_all(plane, context, count))
    # An exact revision older than the new watch cache is read from etcd, each Secret decoded.
    exact = f"?resourceVersion={revision}&resourceVersionMatch=Exact"
    timings.from_etcd.append(
        statistics.median(_list_all(plane, context, count, exact) for _ in range(3))
    )


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000, help="Secrets per control plane")
    parser.add_argument("--rounds", type=int, default=3, help="restarts per provider")
    parser.add_argument("--workers", type=int, default=16, help="threads creating Secrets")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kms-bench-apiserver-"))
    with ExitStack() as stack:
        plugin = PluginProcess(work / "node")
        created = plugin.keys("create")
        if created.returncode != 0:
            raise RuntimeError(f"kms-plugin keys create: {created.stderr}")
        plugin.start()
        stack.callback(plugin.stop)
        planes: dict[str, LocalControlPlane] = {}
        revisions: dict[str, str] = {}
        for name, providers in (
            ("kms v2", [kms_v2_provider(KMS_PROVIDER, plugin.socket_path), IDENTITY_PROVIDER]),
            ("identity", [IDENTITY_PROVIDER]),
        ):
            config = write_encryption_config(work / f"{name.replace(' ', '-')}.yaml", providers)
            plane = stack.enter_context(encrypted_control_plane(config))
            started = time.monotonic()
            _create_secrets(plane, args.count, args.workers)
            print(
                f"{name}: {args.count} Secrets created in {time.monotonic() - started:.1f} s",
                file=sys.stderr,
            )
            planes[name] = plane
            revisions[name] = _list_revision(plane)
        stored = etcd_values(planes["kms v2"], f"/registry/secrets/{NAMESPACE}/").values()
        seeds = {stored_encrypted_object(raw, KMS_PROVIDER).encrypted_dek_source for raw in stored}
        print(
            f"kms v2: {len(stored)} Secrets in etcd under {len(seeds)} DEK seed(s)", file=sys.stderr
        )

        timings = {name: Timings() for name in planes}
        for round_number in range(args.rounds):
            for name, plane in planes.items():
                _restart_and_list(plane, args.count, revisions[name], timings[name])
                print(
                    f"round {round_number + 1} {name}: ready {timings[name].ready[-1]:.2f} s, "
                    f"list {timings[name].listing[-1]:.3f} s, "
                    f"from etcd {timings[name].from_etcd[-1]:.3f} s; "
                    f"Decrypt calls to the plugin {_plugin_decrypts(plane)}",
                    file=sys.stderr,
                )

    print(f"\n{args.count} Secrets, kube-apiserver restarted {args.rounds} times (median ms):")
    print(f"{'provider':10} {'ready':>8} {'list':>8} {'total':>8} {'etcd':>8}")
    for name, t in timings.items():
        print(f"{name:10} {_ms(t.ready)} {_ms(t.listing)} {_ms(t.total())} {_ms(t.from_etcd)}")
    kms, identity = timings["kms v2"], timings["identity"]

    def ratio(values: Callable[[Timings], list[float]]) -> str:
        return f"{statistics.median(values(kms)) / statistics.median(values(identity)):.2f}"

    print(
        f"ratio kms v2 / identity: total {ratio(Timings.total)}, "
        f"list {ratio(lambda t: t.listing)}, from etcd {ratio(lambda t: t.from_etcd)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Apply N CustomerMasterKeys and time until every one is Ready; report the operator's peak RSS.

Runs a real kube-apiserver and etcd (``kms_operator.devcluster.controlplane``) and the real
``kms-operator run`` process. Not a test: it prints numbers.

    python bench/bench_operator.py [--count 1000] [--workers 20]

Goal on a 2-core machine: all Ready within 30 s, peak RSS at most 250 MiB.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubernetes import client

from kms_operator.devcluster.controlplane import LocalControlPlane
from kms_operator.kube.client import load_api_client
from kms_operator.kube.crds import apply_crds, ensure_namespace

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "kms.cmk.dev", "v1alpha1", "customermasterkeys"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _ready_count(custom: client.CustomObjectsApi, namespace: str) -> int:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    return sum(1 for i in items if (i.get("status") or {}).get("state") == "Enabled")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=100, help="operator --max-workers")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kms-bench-operator-"))
    with LocalControlPlane() as plane:
        api = load_api_client(plane.kubeconfig)
        apply_crds(api, REPO / "crds")
        ensure_namespace(api, "kms-system")
        namespace = "bench"
        ensure_namespace(api, namespace)
        log = (work / "operator.log").open("wb")
        operator = subprocess.Popen(
            [
                sys.executable, "-m", "kms_operator.cli.operator_cli", "run",
                "--cluster", "kubeconfig", "--kubeconfig", str(plane.kubeconfig),
                "--store-path", str(work / "store.db"), "--root-key-file", str(work / "root.key"),
                "--api-host", "127.0.0.1", "--api-port", str(_free_port()),
                "--tls-dir", str(work / "tls"), "--audit-log", str(work / "audit.log"),
                "--max-workers", str(args.workers), "--log-level", args.log_level,
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            custom = client.CustomObjectsApi(api)
            time.sleep(3)  # let the operator start watching
            idle_rss = _rss_kib(operator.pid, "VmRSS")

            def create(index: int) -> None:
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL,
                    {
                        "apiVersion": f"{GROUP}/{VERSION}", "kind": "CustomerMasterKey",
                        "metadata": {"name": f"key-{index:05d}"},
                        "spec": {"aliases": [f"alias/bench/{index}"]},
                    },
                )  # fmt: skip

            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(create, range(args.count)))
            applied = time.monotonic() - started
            ready = 0
            while ready < args.count and time.monotonic() - started < args.timeout:
                time.sleep(0.5)
                ready = _ready_count(custom, namespace)
            elapsed = time.monotonic() - started
            peak = _rss_kib(operator.pid, "VmHWM")
        finally:
            os.killpg(operator.pid, signal.SIGTERM)
            operator.wait(timeout=30)
            api.close()  # type: ignore[no-untyped-call]

    print(f"CustomerMasterKeys          {args.count}")
    print(f"applied in                  {applied:.1f} s")
    print(
        f"all Ready after             {elapsed:.1f} s  ({ready}/{args.count} Ready; goal <= 30 s)"
    )
    print(f"throughput                  {ready / elapsed:.0f} keys/s")
    rss = f"{idle_rss / 1024:.0f} MiB / {peak / 1024:.0f} MiB"
    print(f"operator RSS idle / peak    {rss} (goal <= 250 MiB)")
    return 0 if ready == args.count else 1


if __name__ == "__main__":
    sys.exit(main())

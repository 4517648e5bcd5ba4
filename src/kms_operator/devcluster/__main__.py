"""``python -m kms_operator.devcluster``: start a dev cluster, print how to use it, wait for
Ctrl-C (or SIGTERM), stop everything. ``make cluster`` runs this after building what it needs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kms_operator.devcluster.assets import NodeAssetsError
from kms_operator.devcluster.cluster import DevCluster, DevClusterError
from kms_operator.devcluster.controlplane import ControlPlaneError
from kms_operator.devcluster.host import HostError
from kms_operator.devcluster.processes import stop_requested


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kms_operator.devcluster",
        description="Start a one-node Kubernetes cluster on this machine; Ctrl-C stops it.",
    )
    parser.add_argument(
        "--image",
        action="append",
        type=Path,
        default=[],
        help="an image archive (docker save) to load into the node; repeatable",
    )
    parser.add_argument("--work-dir", type=Path, help="keep state here (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=300.0, help="start timeout (seconds)")
    args = parser.parse_args(argv)

    stopping = stop_requested()
    cluster = DevCluster(images=args.image, work_dir=args.work_dir, start_timeout=args.timeout)
    try:
        cluster.start()
    except (DevClusterError, ControlPlaneError, NodeAssetsError, HostError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        kubectl = cluster.control_plane.assets / "kubectl"
        times = ", ".join(f"{k} {v}s" for k, v in cluster.timings.items())
        print(f"# dev cluster ready at {cluster.server}, node {cluster.node_name} ({times})")
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        print(f"{kubectl} get nodes,pods -A")
        print(f"# logs: {cluster.layout.path('logs')}; Ctrl-C stops everything", flush=True)
        while not stopping.wait(2.0):
            dead = cluster.running()
            if dead:
                print(f"error: exited: {', '.join(dead)}\n{cluster.logs_report()}", file=sys.stderr)
                return 1
    finally:
        try:
            cluster.stop()
        except DevClusterError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

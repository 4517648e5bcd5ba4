"""Starting the operator against a cluster without our CRDs: a clear refusal, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kms_operator.devcluster.controlplane import LocalControlPlane


def test_refuses_to_start_without_the_crds(tmp_path: Path) -> None:
    with LocalControlPlane() as bare:  # a control plane of its own: no CRDs installed
        result = subprocess.run(
            [
                sys.executable, "-m", "kms_operator.cli.operator_cli", "run",
                "--cluster", "kubeconfig", "--kubeconfig", str(bare.kubeconfig), "--no-api",
                "--store-path", str(tmp_path / "store.db"),
                "--root-key-file", str(tmp_path / "root.key"),
            ],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert result.returncode != 0
    assert "install the CRDs first" in result.stderr
    assert "Traceback" not in result.stderr

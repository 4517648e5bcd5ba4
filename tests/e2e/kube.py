"""kubectl and helm against the e2e cluster, polling helpers and restricted workload pods."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def _tool(name: str) -> Path:
    for directory in (os.environ.get("KUBEBUILDER_ASSETS"), str(ROOT / ".envtest" / "bin")):
        if directory and (Path(directory) / name).is_file():
            return Path(directory) / name
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: run hack/controlplane/ensure.sh", pytrace=False)
    return Path(found)


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float = 180.0,
    interval: float = 1.0,
    report: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns something other than None (or False)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{report()}" if report else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{extra}", pytrace=False)
        time.sleep(interval)


@dataclass
class Kube:
    """kubectl and helm against the e2e cluster, and the image to run."""

    kubeconfig: Path
    image_repository: str
    image_tag: str
    pull_policy: str
    helm_home: Path
    kubectl_path: Path = field(default_factory=lambda: _tool("kubectl"))
    helm_path: Path = field(default_factory=lambda: _tool("helm"))
    diagnostics: Callable[[], str] | None = None

    @property
    def image(self) -> str:
        return f"{self.image_repository}:{self.image_tag}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(self.helm_home / "cache"),
            "HELM_CONFIG_HOME": str(self.helm_home / "config"),
            "HELM_DATA_HOME": str(self.helm_home / "data"),
        }

    def _run(
        self, binary: Path, args: tuple[str, ...], stdin: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(binary), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"{binary.name} {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stderr.strip()}",
                pytrace=False,
            )
        return result

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return self._run(self.kubectl_path, args, stdin, check, timeout)

    def helm(
        self, *args: str, check: bool = True, timeout: float = 600.0
    ) -> subprocess.CompletedProcess[str]:
        return self._run(self.helm_path, args, None, check, timeout)

    def get(self, *args: str) -> dict[str, Any] | None:
        """``kubectl get ARGS -o json``; None when NotFound."""
        result = self.kubectl("get", *args, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return None
            pytest.fail(f"kubectl get {' '.join(args)}: {result.stderr.strip()}", pytrace=False)
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def apply(self, namespace: str | None, manifest: dict[str, Any] | str) -> None:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
        self.kubectl(*args, stdin=text)

    def create_namespace(self, name: str, restricted: bool = True) -> None:
        labels = {"kms.cmk.dev/e2e": "true"}
        if restricted:
            labels |= {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            }
        self.apply(
            None,
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}},
        )

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes]:
        secret = self.get("secret", "-n", namespace, name)
        assert secret is not None, f"Secret {namespace}/{name} does not exist"
        return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}

    def condition(self, obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
        if obj is None:
            return None
        for cond in obj.get("status", {}).get("conditions", []) or []:
            if cond.get("type") == kind:
                return dict(cond)
        return None

    def ready(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object once its Ready condition is True."""
        obj = self.get(resource, "-n", namespace, name)
        cond = self.condition(obj, "Ready")
        return obj if cond is not None and cond.get("status") == "True" else None

    def wait_ready(
        self, resource: str, namespace: str, name: str, timeout: float = 180.0
    ) -> dict[str, Any]:
        return wait_for(
            f"{resource} {namespace}/{name} Ready",
            lambda: self.ready(resource, namespace, name),
            timeout,
            report=lambda: self.describe(resource, namespace, name),
        )

    def describe(self, resource: str, namespace: str, name: str) -> str:
        out = self.kubectl("describe", resource, "-n", namespace, name, check=False)
        text = (out.stdout or out.stderr)[-4000:]
        if self.diagnostics is not None:
            text += "\n" + self.diagnostics()
        return text

    # -- workload pods ------------------------------------------------------------------------

    def run_pod(
        self,
        namespace: str,
        script: str,
        *,
        service_account: str = "default",
        volumes: list[dict[str, Any]] | None = None,
        mounts: list[dict[str, Any]] | None = None,
        env: list[dict[str, Any]] | None = None,
        timeout: float = 180.0,
    ) -> tuple[str, str]:
        """Run ``sh -c script`` in a restricted pod of the kms-operator image (it has sh,
        python3 and kmsctl); returns (phase, logs) once it has finished."""
        name = f"e2e-{uuid.uuid4().hex[:8]}"
        security = {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"kms.cmk.dev/e2e": "workload"},
            },
            "spec": {
                "serviceAccountName": service_account,
                "restartPolicy": "Never",
                "enableServiceLinks": False,
                "securityContext": {
                    "runAsNonRoot": True,
                    "fsGroup": 65532,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "work",
                        "image": self.image,
                        "imagePullPolicy": self.pull_policy,
                        "command": ["sh", "-c", script],
                        "securityContext": security,
                        "env": env or [],
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *(mounts or [])],
                        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
                    }
                ],
                "volumes": [{"name": "tmp", "emptyDir": {}}, *(volumes or [])],
            },
        }
        self.apply(namespace, pod)

        def finished() -> str | None:
            got = self.get("pod", "-n", namespace, name)
            phase = (got or {}).get("status", {}).get("phase")
            return phase if phase in ("Succeeded", "Failed") else None

        phase = wait_for(
            f"pod {namespace}/{name} to finish",
            finished,
            timeout,
            report=lambda: self.describe("pod", namespace, name),
        )
        logs = self.kubectl("logs", "-n", namespace, name, check=False)
        if phase == "Failed":
            got = self.get("pod", "-n", namespace, name) or {}
            statuses = got.get("status", {}).get("containerStatuses", [])
            states = [c.get("state", {}) for c in statuses]
            events = self.kubectl(
                "get",
                "events",
                "-n",
                namespace,
                "--field-selector",
                f"involvedObject.name={name}",
                check=False,
            )
            logs.stderr += f"\n--- container states ---\n{states}\n--- events ---\n{events.stdout}"
        self.kubectl("delete", "pod", "-n", namespace, name, "--wait=false", check=False)
        return phase, logs.stdout + logs.stderr

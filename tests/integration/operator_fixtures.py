"""The real ``kms-operator run`` process against the real control plane, as a fixture.

``operator_process`` (module scope) installs the CRDs, starts the operator with a short day
(``--day-seconds``), its API on a free port and an audit file, and waits until ``/readyz``.
It can be killed (SIGKILL) and restarted on the same store, as crash tests need.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kms_operator.devcluster.controlplane import LocalControlPlane
from kms_operator.kube.crds import apply_crds

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, CMK = "kms.cmk.dev", "v1alpha1", "customermasterkeys"
OPERATOR_NAMESPACE = "kms-system"
DAY_SECONDS = float(os.environ.get("KMS_TEST_DAY_SECONDS", "2"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    probe: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or probe}: last={last!r}")


class OperatorProcess:
    def __init__(
        self,
        plane: LocalControlPlane,
        work_dir: Path,
        day_seconds: float,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.extra_args = extra_args
        self.plane = plane
        self.work_dir = work_dir
        self.day_seconds = day_seconds
        self.store_path = work_dir / "store.db"
        self.root_key_file = work_dir / "root.key"
        self.audit_log = work_dir / "audit.log"
        self.tls_dir = work_dir / "tls"
        self.log_file = work_dir / "operator.log"
        self.api_port = _free_port()
        self.api_url = f"https://127.0.0.1:{self.api_port}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "ca.crt"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "kms_operator.cli.operator_cli", "run",
            "--cluster", "kubeconfig",
            "--kubeconfig", str(self.plane.kubeconfig),
            "--store-path", str(self.store_path),
            "--root-key-file", str(self.root_key_file),
            "--day-seconds", str(self.day_seconds),
            "--operator-namespace", OPERATOR_NAMESPACE,
            "--api-host", "127.0.0.1",
            "--api-port", str(self.api_port),
            "--tls-dir", str(self.tls_dir),
            "--audit-log", str(self.audit_log),
            "--auth-cache-seconds", "1",
            "--log-format", "json",
            "--log-level", "DEBUG",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
        wait_for(self._ready, timeout=60, what=f"operator readiness (log: {self.log_file})")

    def _ready(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise AssertionError(
                f"operator exited with {self._process.returncode}:\n{self.log_tail()}"
            )
        if not self.ca_file.exists():
            return False
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(  # noqa: S310 - a fixed https URL
                f"{self.api_url}/readyz", context=context, timeout=2
            ) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


@pytest.fixture(scope="session")
def crds_installed(kube_api: client.ApiClient) -> list[str]:
    names = apply_crds(kube_api, REPO / "crds")
    try:
        client.CoreV1Api(kube_api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=OPERATOR_NAMESPACE))
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
    return names


@pytest.fixture(scope="module")
def operator_process(
    request: pytest.FixtureRequest,
    control_plane: LocalControlPlane,
    crds_installed: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """One operator per test module; a module may set ``OPERATOR_DAY_SECONDS`` and
    ``OPERATOR_EXTRA_ARGS``."""
    process = OperatorProcess(
        control_plane,
        tmp_path_factory.mktemp("operator"),
        day_seconds=getattr(request.module, "OPERATOR_DAY_SECONDS", DAY_SECONDS),
        extra_args=tuple(getattr(request.module, "OPERATOR_EXTRA_ARGS", ())),
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()
        process.kill()


class CustomObjects:
    """Objects of one of our kinds through the Kubernetes API, and waiting on their status."""

    kind = ""
    plural = ""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def create(self, namespace: str, name: str, spec: dict[str, Any] | None = None,
               **metadata: Any) -> dict[str, Any]:  # fmt: skip
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": self.kind,
            "metadata": {"name": name, "namespace": namespace, **metadata},
            "spec": spec or {},
        }
        result: dict[str, Any] = self.api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, self.plural, body
        )
        return result

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, self.plural, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(GROUP, VERSION, namespace, self.plural, name, body)

    def delete(self, namespace: str, name: str) -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, namespace, self.plural, name)

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        body = self.get(namespace, name)
        return dict((body or {}).get("status") or {})

    def wait_status(
        self, namespace: str, name: str, check: Callable[[dict[str, Any]], bool],
        timeout: float = 30.0, what: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        result: dict[str, Any] = wait_for(
            lambda: (s := self.status(namespace, name)) and check(s) and s,
            timeout=timeout,
            what=what or f"status of {self.kind} {namespace}/{name}",
        )
        return result


class Cmks(CustomObjects):
    kind, plural = "CustomerMasterKey", CMK

    def wait_state(
        self, namespace: str, name: str, state: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        return self.wait_status(
            namespace, name, lambda s: s.get("state") == state, timeout,
            what=f"{namespace}/{name} to be {state}",
        )  # fmt: skip


@pytest.fixture(scope="session")
def cmks(kube_api: client.ApiClient) -> Cmks:
    return Cmks(kube_api)

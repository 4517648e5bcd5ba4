"""The Helm chart against a real kube-apiserver: every object accepted, RBAC exactly as intended,
the root key kept across upgrade, uninstall and re-install.

No controller-manager runs, so no pod ever starts: these tests prove what the API server
decides (schemas, Pod Security admission, RBAC through SubjectAccessReview) and what Helm does
with the release, not that the operator works in a pod (the e2e suite on kind does that).
"""

from __future__ import annotations

import base64
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kms_operator.contract import WEBHOOK_CONFIGURATION
from kms_operator.devcluster.controlplane import LocalControlPlane

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kms-operator"
#: (verb, resource[/name], extra kubectl auth can-i arguments)
Case = tuple[str, str, list[str]]
CLUSTER_KINDS = (
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
)
CRD_NAMES = (
    "customermasterkeys.kms.cmk.dev",
    "keymaterialimports.kms.cmk.dev",
    "datakeys.kms.cmk.dev",
)


class Tools:
    """helm and kubectl pointed at the control plane, with Helm's state in a temp dir."""

    def __init__(self, control_plane: LocalControlPlane, home: Path) -> None:
        self.helm = _binary(control_plane, "helm")
        self.kubectl = _binary(control_plane, "kubectl")
        self.env = {
            **os.environ,
            "KUBECONFIG": str(control_plane.kubeconfig),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def run(
        self, binary: Path, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(binary), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(f"{binary.name} {' '.join(args)} failed:\n{result.stderr}", pytrace=False)
        return result

    def kubectl_run(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run(self.kubectl, *args, **kwargs)

    def helm_run(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run(self.helm, *args, **kwargs)

    def template(self, release: str, namespace: str, *sets: str, crds: bool = True) -> str:
        args = ["template", release, str(CHART), "--namespace", namespace]
        if crds:
            args.append("--include-crds")
        for value in sets:
            args += ["--set", value]
        return self.helm_run(*args).stdout

    def apply(self, manifest: str) -> subprocess.CompletedProcess[str]:
        return self.kubectl_run(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=chart-test",
            "-f",
            "-",
            stdin=manifest,
        )

    def can_i(self, sa: str, verb: str, resource: str, *where: str) -> bool:
        """SubjectAccessReview for ``sa`` (``namespace:name``) through ``kubectl auth can-i``."""
        result = self.kubectl_run(
            "auth",
            "can-i",
            verb,
            resource,
            f"--as=system:serviceaccount:{sa}",
            *where,
            check=False,
        )
        answer = result.stdout.strip()
        assert answer in ("yes", "no"), result.stderr
        return answer == "yes"


def _binary(control_plane: LocalControlPlane, name: str) -> Path:
    for directory in (control_plane.assets, ROOT / ".envtest" / "bin"):
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        f"{name} not found next to kube-apiserver nor in .envtest/bin; build it with "
        "hack/controlplane/ensure.sh",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def tools(control_plane: LocalControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Tools:
    return Tools(control_plane, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture
def make_namespace(tools: Tools) -> Iterator[Callable[[], str]]:
    """Fresh namespaces enforcing and warning on the ``restricted`` Pod Security Standard."""
    made: list[str] = []

    def make() -> str:
        name = f"chart-{uuid.uuid4().hex[:8]}"
        manifest = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/warn": "restricted",
                    "pod-security.kubernetes.io/audit": "restricted",
                },
            },
        }
        tools.apply(yaml.safe_dump(manifest))
        made.append(name)
        return name

    yield make
    for name in made:
        tools.kubectl_run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def cluster_scoped(tools: Tools) -> Iterator[list[str]]:
    """Cluster-scoped objects (``kind/name``) a test created, deleted afterwards."""
    created: list[str] = []
    yield created
    if created:
        tools.kubectl_run("delete", "--ignore-not-found", *created, check=False)


def _cluster_objects(release: str) -> list[str]:
    """The cluster-scoped objects a release creates (the admission policies' names may be
    absent: deleted with --ignore-not-found)."""
    policies = [f"{release}-{p}" for p in ("datakeys", "operator-secrets", "keymaterialimports")]
    return [
        f"clusterrole/{release}",
        f"clusterrolebinding/{release}",
        *(f"validatingadmissionpolicybinding/{name}" for name in policies),
        *(f"validatingadmissionpolicy/{name}" for name in policies),
    ]


def _install_rendered(
    tools: Tools, cluster_scoped: list[str], namespace: str, *sets: str
) -> tuple[str, list[dict[str, Any]]]:
    release = f"kms-operator-{uuid.uuid4().hex[:6]}"
    manifest = tools.template(release, namespace, *sets)
    objects = [doc for doc in yaml.safe_load_all(manifest) if doc]
    cluster_scoped += _cluster_objects(release)
    cluster_scoped += [
        f"validatingwebhookconfiguration/{o['metadata']['name']}"
        for o in objects
        if o["kind"] == "ValidatingWebhookConfiguration"
    ]
    result = tools.apply(manifest)
    assert "Warning" not in result.stderr, result.stderr  # Pod Security "restricted" is met
    return release, objects


def test_every_rendered_object_is_accepted(
    tools: Tools, make_namespace: Callable[[], str], cluster_scoped: list[str]
) -> None:
    namespace = make_namespace()
    release, objects = _install_rendered(tools, cluster_scoped, namespace)
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        where = ["-n", namespace] if kind not in CLUSTER_KINDS else []
        if kind == "CustomResourceDefinition":
            where = []
        got = tools.kubectl_run("get", kind, name, *where, "-o", "yaml")
        live = yaml.safe_load(got.stdout)
        if kind == "CustomResourceDefinition":
            continue
        assert live["metadata"]["labels"]["app.kubernetes.io/instance"] == release
    kinds = {o["kind"] for o in objects}
    assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} <= kinds
    sts = yaml.safe_load(
        tools.kubectl_run("get", "statefulset", release, "-n", namespace, "-o", "yaml").stdout
    )
    assert sts["spec"]["replicas"] == 1
    secret = yaml.safe_load(
        tools.kubectl_run(
            "get", "secret", f"{release}-root-key", "-n", namespace, "-o", "yaml"
        ).stdout
    )
    assert len(base64.b64decode(secret["data"]["root.key"])) == 32
    assert secret["immutable"] is True


def test_all_optional_objects_are_accepted(
    tools: Tools, make_namespace: Callable[[], str], cluster_scoped: list[str]
) -> None:
    namespace = make_namespace()
    _install_rendered(
        tools,
        cluster_scoped,
        namespace,
        "networkPolicy.enabled=true",
        "webhook.enabled=true",
        "developmentOnly.daySeconds=60",
        "api.tokenAudience=kms.cmk.dev",
        f"watchNamespaces={{{namespace}}}",
        "rbac.readSecretsForImports=false",
    )


def test_rbac_cluster_wide_is_exactly_what_the_operator_uses(
    tools: Tools, make_namespace: Callable[[], str], cluster_scoped: list[str]
) -> None:
    namespace = make_namespace()
    release, _ = _install_rendered(tools, cluster_scoped, namespace)
    sa = f"{namespace}:{release}"
    anywhere = ["-n", "some-team"]
    granted = [
        ("get", "customermasterkeys.kms.cmk.dev", anywhere),
        ("list", "customermasterkeys.kms.cmk.dev", ["-A"]),
        ("watch", "customermasterkeys.kms.cmk.dev", ["-A"]),
        ("create", "customermasterkeys.kms.cmk.dev", anywhere),
        ("patch", "customermasterkeys.kms.cmk.dev", anywhere),
        ("patch", "customermasterkeys.kms.cmk.dev", [*anywhere, "--subresource=status"]),
        ("update", "customermasterkeys.kms.cmk.dev", [*anywhere, "--subresource=status"]),
        ("watch", "keymaterialimports.kms.cmk.dev", ["-A"]),
        # The AWS API's lifecycle operations, for callers who hold the same verb.
        ("delete", "customermasterkeys.kms.cmk.dev", anywhere),
        ("create", "keymaterialimports.kms.cmk.dev", anywhere),
        ("delete", "keymaterialimports.kms.cmk.dev", anywhere),
        ("patch", "datakeys.kms.cmk.dev", [*anywhere, "--subresource=status"]),
        ("create", "events", anywhere),
        ("list", "customresourcedefinitions.apiextensions.k8s.io", []),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io", []),
        ("create", "tokenreviews.authentication.k8s.io", []),
        ("create", "subjectaccessreviews.authorization.k8s.io", []),
        # Keys are bound to their namespace's UID: one namespace at a time, by name.
        ("get", "namespaces/some-team", []),
        ("create", "configmaps", ["-n", namespace]),
        ("patch", f"configmaps/{release}-ca", ["-n", namespace]),
        ("get", f"configmaps/{release}-ca", ["-n", namespace]),
        # DataKeys' owned Secrets, KeyMaterialImports' named ones: one at a time, by name.
        ("get", "secrets", anywhere),
        ("create", "secrets", anywhere),
        ("update", "secrets", anywhere),
        ("update", "datakeys.kms.cmk.dev", [*anywhere, "--subresource=finalizers"]),
    ]
    refused = [
        ("list", "secrets", ["-A"]),
        ("watch", "secrets", anywhere),
        ("patch", "secrets", anywhere),
        ("delete", "secrets", anywhere),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io", []),
        ("update", "customresourcedefinitions.apiextensions.k8s.io", []),
        ("deletecollection", "customermasterkeys.kms.cmk.dev", anywhere),
        ("create", "datakeys.kms.cmk.dev", anywhere),
        ("delete", "datakeys.kms.cmk.dev", anywhere),
        ("delete", "events", anywhere),
        ("get", "configmaps/other", ["-n", namespace]),
        ("patch", f"configmaps/{release}-ca", ["-n", "kube-system"]),
        ("create", "configmaps", anywhere),
        ("list", "namespaces", []),
        ("watch", "namespaces", []),
        ("update", "namespaces/some-team", []),
        ("delete", "namespaces/some-team", []),
        ("create", "pods", ["-n", namespace]),
        ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io", []),
        ("impersonate", "serviceaccounts", anywhere),
        ("escalate", "clusterroles.rbac.authorization.k8s.io", []),
    ]
    _check(tools, sa, granted, refused)


def test_rbac_for_watched_namespaces(
    tools: Tools, make_namespace: Callable[[], str], cluster_scoped: list[str]
) -> None:
    namespace, team_a, team_b, other = (make_namespace() for _ in range(4))
    release, _ = _install_rendered(
        tools, cluster_scoped, namespace, f"watchNamespaces={{{team_a},{team_b}}}"
    )
    sa = f"{namespace}:{release}"
    granted = [
        *(
            (verb, "customermasterkeys.kms.cmk.dev", ["-n", ns])
            for verb in ("get", "list", "watch", "create", "patch", "delete")
            for ns in (team_a, team_b)
        ),
        ("create", "keymaterialimports.kms.cmk.dev", ["-n", team_a]),
        ("patch", "customermasterkeys.kms.cmk.dev", ["-n", team_b, "--subresource=status"]),
        ("create", "events", ["-n", team_a]),
        ("list", "namespaces", []),
        ("watch", "namespaces", []),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io", []),
        ("create", "tokenreviews.authentication.k8s.io", []),
        ("create", "subjectaccessreviews.authorization.k8s.io", []),
        ("create", "configmaps", ["-n", namespace]),
        ("get", "secrets", ["-n", team_a]),
        ("create", "secrets", ["-n", team_b]),
        ("update", "secrets", ["-n", team_a]),
    ]
    refused = [
        ("list", "customermasterkeys.kms.cmk.dev", ["-n", other]),
        ("get", "secrets", ["-n", other]),
        ("get", "secrets", ["-n", namespace]),  # the root key's namespace
        ("create", "secrets", ["-n", other]),
        ("watch", "customermasterkeys.kms.cmk.dev", ["-A"]),
        ("get", "customermasterkeys.kms.cmk.dev", ["-n", other]),
        ("patch", "customermasterkeys.kms.cmk.dev", ["-n", other]),
        ("delete", "customermasterkeys.kms.cmk.dev", ["-n", other]),
        ("delete", "keymaterialimports.kms.cmk.dev", ["-n", other]),
        ("create", "events", ["-n", other]),
        ("create", "configmaps", ["-n", team_a]),
        ("list", "secrets", ["-n", team_a]),
        ("list", "secrets", ["-A"]),
    ]
    _check(tools, sa, granted, refused)


def test_rbac_for_the_webhook(
    tools: Tools, make_namespace: Callable[[], str], cluster_scoped: list[str]
) -> None:
    namespace = make_namespace()
    """Issue 8, item 5: the chart makes the ValidatingWebhookConfiguration; the operator can
    patch that one only: no create, no other configuration, nothing mutating."""
    release, _ = _install_rendered(tools, cluster_scoped, namespace, "webhook.enabled=true")
    live = yaml.safe_load(
        tools.kubectl_run(
            "get", "validatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "-o", "yaml"
        ).stdout
    )
    assert live["metadata"]["labels"]["app.kubernetes.io/instance"] == release
    assert not live.get("webhooks")
    sa = f"{namespace}:{release}"
    validating = "validatingwebhookconfigurations.admissionregistration.k8s.io"
    mutating = "mutatingwebhookconfigurations.admissionregistration.k8s.io"
    granted: list[Case] = [("patch", f"{validating}/{WEBHOOK_CONFIGURATION}", [])]
    refused: list[Case] = [
        ("create", validating, []),
        ("create", mutating, []),
        ("patch", f"{mutating}/{WEBHOOK_CONFIGURATION}", []),
        ("update", f"{validating}/{WEBHOOK_CONFIGURATION}", []),
        ("delete", f"{validating}/{WEBHOOK_CONFIGURATION}", []),
        ("patch", f"{validating}/other", []),
        ("list", validating, []),
        ("list", mutating, []),
        ("get", f"{mutating}/{WEBHOOK_CONFIGURATION}", []),
    ]
    _check(tools, sa, granted, refused)


def _check(
    tools: Tools,
    sa: str,
    granted: list[Case],
    refused: list[Case],
) -> None:
    wrong = [
        f"{'refused' if expected else 'allowed'}: {verb} {resource} {' '.join(where)}"
        for expected, cases in ((True, granted), (False, refused))
        for verb, resource, where in cases
        if tools.can_i(sa, verb, resource, *where) is not expected
    ]
    assert not wrong, "RBAC differs from the operator's needs:\n" + "\n".join(wrong)


# -- the release lifecycle -------------------------------------------------------------------


def _root_key(tools: Tools, namespace: str, release: str) -> str:
    result = tools.kubectl_run(
        "get",
        "secret",
        f"{release}-root-key",
        "-n",
        namespace,
        "-o",
        "jsonpath={.data.root\\.key}",
    )
    return result.stdout


def test_root_key_and_crds_survive_upgrade_uninstall_and_reinstall(
    tools: Tools, make_namespace: Callable[[], str], cluster_scoped: list[str]
) -> None:
    namespace = make_namespace()
    release = f"kms-operator-{uuid.uuid4().hex[:6]}"
    cluster_scoped += _cluster_objects(release)
    install = ["install", release, str(CHART), "--namespace", namespace]

    notes = tools.helm_run(*install).stdout
    assert f"https://{release}.{namespace}.svc:8443" in notes
    key = _root_key(tools, namespace, release)
    assert len(base64.b64decode(key)) == 32

    # Upgrade: `lookup` finds the Secret and renders the same key.
    tools.helm_run(
        "upgrade", release, str(CHART), "--namespace", namespace, "--set", "maxWorkers=8"
    )
    assert _root_key(tools, namespace, release) == key

    # A render without lookup (helm template, GitOps) carries a different key: the immutable
    # Secret refuses it instead of silently replacing the key that wraps every key.
    stray = tools.template(release, namespace, crds=False)
    (secret,) = [doc for doc in yaml.safe_load_all(stray) if doc and doc["kind"] == "Secret"]
    refused = tools.kubectl_run("apply", "-f", "-", stdin=yaml.safe_dump(secret), check=False)
    assert refused.returncode != 0
    assert "immutable" in refused.stderr.lower()
    assert _root_key(tools, namespace, release) == key

    # Uninstall keeps the root key Secret and the CRDs; the rest goes.
    tools.helm_run("uninstall", release, "--namespace", namespace)
    assert _root_key(tools, namespace, release) == key
    for crd in CRD_NAMES:
        tools.kubectl_run("get", "crd", crd)
    gone = tools.kubectl_run("get", "statefulset", release, "-n", namespace, check=False)
    assert gone.returncode != 0

    # Re-install with the same name adopts the kept Secret, with the same key.
    tools.helm_run(*install)
    assert _root_key(tools, namespace, release) == key
    tools.helm_run("uninstall", release, "--namespace", namespace)


def test_existing_root_key_secret_is_used_not_created(
    tools: Tools, make_namespace: Callable[[], str], cluster_scoped: list[str]
) -> None:
    namespace = make_namespace()
    release = f"kms-operator-{uuid.uuid4().hex[:6]}"
    cluster_scoped += _cluster_objects(release)
    tools.helm_run(
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--set",
        "rootKey.existingSecret=my-root-key",
    )
    missing = tools.kubectl_run(
        "get", "secret", f"{release}-root-key", "-n", namespace, check=False
    )
    assert missing.returncode != 0
    sts = yaml.safe_load(
        tools.kubectl_run("get", "statefulset", release, "-n", namespace, "-o", "yaml").stdout
    )
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["root-key-secret"]["secret"]["secretName"] == "my-root-key"
    tools.helm_run("uninstall", release, "--namespace", namespace)

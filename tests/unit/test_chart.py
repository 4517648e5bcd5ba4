"""Static checks of the Helm chart (charts/kms-operator) and the install YAML rendered from it.

``helm lint`` and ``helm template`` run here with the helm binary of the local control plane
(``$KUBEBUILDER_ASSETS/helm`` or ``.envtest/bin/helm``; ``make test`` builds it), and the
rendered objects are checked: pod security, probes, one replica and its volume, the kept root
key and CRDs, RBAC rule by rule, NOTES. The API server's verdict on the same objects is in
tests/integration/test_chart.py.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kms_operator.cli import operator_cli
from kms_operator.contract import WEBHOOK_CONFIGURATION
from kms_operator.store.rootkey import load_root_key_file

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kms-operator"
REPO_CRDS = ROOT / "crds"
INSTALL = ROOT / "manifests" / "install" / "kms-operator.yaml"
RENDER_INSTALL = ROOT / "hack" / "render-install.sh"
RELEASE, NAMESPACE = "kms-operator", "kms-system"
KEEP = "helm.sh/resource-policy"

Obj = dict[str, Any]


def find_helm() -> Path:
    candidates = [ROOT / ".envtest" / "bin" / "helm"]
    if os.environ.get("KUBEBUILDER_ASSETS"):
        candidates.insert(0, Path(os.environ["KUBEBUILDER_ASSETS"]) / "helm")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "helm not found in $KUBEBUILDER_ASSETS or .envtest/bin; build it with "
        "hack/controlplane/ensure.sh (make test does)",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def helm() -> Path:
    return find_helm()


def helm_run(helm: Path, *args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    """``helm <command> [release] <chart> <flags>``: a release name for ``template`` only."""
    command, *flags = args
    release = [RELEASE] if command == "template" else []
    return subprocess.run(
        [str(helm), command, *release, str(chart), *flags],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def render(helm: Path, *sets: str, chart: Path = CHART, crds: bool = False) -> list[Obj]:
    args = ["template", "--namespace", NAMESPACE]
    if crds:
        args.append("--include-crds")
    for value in sets:
        args += ["--set", value]
    result = helm_run(helm, *args, chart=chart)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"].get("name"))]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def default(helm: Path) -> list[Obj]:
    return render(helm)


@pytest.fixture(scope="module")
def pod(default: list[Obj]) -> Obj:
    spec: Obj = one(default, "StatefulSet")["spec"]["template"]["spec"]
    return spec


# -- lint, schema --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sets",
    [
        (),
        (
            "watchNamespaces={team-a,team-b}",
            "webhook.enabled=true",
            "serviceMonitor.enabled=true",
            "networkPolicy.enabled=true",
            "developmentOnly.daySeconds=60",
            "rootKey.existingSecret=my-root-key",
            "rbac.readSecretsForImports=false",
        ),
    ],
    ids=["defaults", "everything-on"],
)
def test_lint_strict(helm: Path, sets: tuple[str, ...]) -> None:
    args = ["lint", "--strict", "--namespace", NAMESPACE]
    for value in sets:
        args += ["--set", value]
    result = helm_run(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "bad",
    [
        "replicaCount=2",  # no such value: one replica, always
        "readinessProbe.httpGet.scheme=HTTP",
        "logging.format=xml",
        "developmentOnly.daySeconds=0",
        "watchNamespaces={Not_A_Namespace}",
        "api.tokenAudience=",
        "api.awsAccountId=12345",
    ],
)
def test_schema_refuses(helm: Path, bad: str) -> None:
    result = helm_run(helm, "template", "--set", bad)
    assert result.returncode != 0
    assert "schema" in result.stderr


# -- labels --------------------------------------------------------------------------------


def test_standard_labels_on_every_object(default: list[Obj]) -> None:
    for obj in default:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "kms-operator"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "kms-operator-0.1.0"


def test_name_overrides(helm: Path) -> None:
    objects = render(helm, "fullnameOverride=vault-of-keys")
    assert one(objects, "StatefulSet")["metadata"]["name"] == "vault-of-keys"
    assert one(objects, "Service")["metadata"]["name"] == "vault-of-keys"
    args = one(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--api-service-name=vault-of-keys" in args
    assert "--ca-configmap=vault-of-keys-ca" in args
    objects = render(helm, "nameOverride=keys")
    sts = one(objects, "StatefulSet")
    assert sts["metadata"]["name"] == "kms-operator-keys"
    assert sts["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "keys"
    assert one(objects, "Secret")["metadata"]["name"] == "kms-operator-keys-root-key"


# -- the pod -------------------------------------------------------------------------------


def test_one_replica_statefulset_with_retained_claim(default: list[Obj]) -> None:
    sts = one(default, "StatefulSet")["spec"]
    assert sts["replicas"] == 1
    assert sts["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    assert not [o for o in default if o["kind"] == "Deployment"]
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in claim["spec"]  # the cluster's default class


def test_storage_values(helm: Path) -> None:
    sts = one(
        render(helm, "persistence.storageClassName=fast", "persistence.size=5Gi"), "StatefulSet"
    )
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"


def _restricted(context: Obj) -> None:
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 65532
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not context.get("privileged")


def test_restricted_pod_security(pod: Obj) -> None:
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 65532
    assert security["fsGroup"] == 65532
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["initContainers"] + pod["containers"]:
        _restricted(container["securityContext"])
        assert container["resources"]["requests"] and container["resources"]["limits"]
    assert not pod.get("hostNetwork") and not pod.get("hostPID")


def test_probes_over_https(pod: Obj) -> None:
    (container,) = pod["containers"]
    assert container["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]
    paths = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in paths.items():
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"], get["scheme"]) == (path, "https", "HTTPS")


def _args(pod: Obj) -> list[str]:
    args: list[str] = pod["containers"][0]["args"]
    return args


def test_operator_arguments(pod: Obj) -> None:
    (container,) = pod["containers"]
    assert container["command"] == ["kms-operator"]
    args = _args(pod)
    assert args[0] == "run"
    assert "--cluster=kubeconfig" in args  # never a local control plane in the pod
    assert f"--operator-namespace={NAMESPACE}" in args
    assert "--api-service-name=kms-operator" in args
    assert "--ca-configmap=kms-operator-ca" in args
    assert "--tls-dir=/var/lib/kms-operator/tls" in args  # on the volume: a stable CA
    # Tokens minted for the Kubernetes API server are refused by default (issue 8, item 6).
    assert [a for a in args if a.startswith("--token-audience")] == ["--token-audience=kms.cmk.dev"]
    assert "--aws-account-id=000000000000" in args
    assert not [a for a in args if a.startswith(("--day-seconds", "--namespace", "--static"))]


def test_every_flag_exists_in_kms_operator_run(helm: Path) -> None:
    objects = render(
        helm,
        "watchNamespaces={a}",
        "webhook.enabled=true",
        "developmentOnly.daySeconds=60",
        "api.tokenAudience=kms.cmk.dev",
    )
    args = one(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["args"]
    known = {opt for param in operator_cli.run.params for opt in param.opts + param.secondary_opts}
    for arg in args[1:]:
        assert arg.split("=", 1)[0] in known, f"kms-operator run has no option {arg}"


def test_day_seconds_only_through_development_value(helm: Path) -> None:
    objects = render(helm, "developmentOnly.daySeconds=60")
    args = one(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--day-seconds=60" in args


def test_watch_namespaces_become_flags(helm: Path) -> None:
    objects = render(helm, "watchNamespaces={team-a,team-b}")
    args = one(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace=")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]


def test_volumes(pod: Obj) -> None:
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret = volumes["root-key-secret"]["secret"]
    assert secret["secretName"] == "kms-operator-root-key"
    assert secret["defaultMode"] == 0o400
    assert secret["items"] == [{"key": "root.key", "path": "root.key"}]
    assert volumes["root-key"]["emptyDir"]["medium"] == "Memory"
    (operator,) = pod["containers"]
    mounts = {m["name"]: m for m in operator["volumeMounts"]}
    assert "root-key-secret" not in mounts  # only the init container sees the Secret
    assert mounts["root-key"]["readOnly"] is True
    assert mounts["root-key"]["mountPath"] == "/etc/kms-operator/root-key"
    assert mounts["data"]["mountPath"] == "/var/lib/kms-operator"
    (init,) = pod["initContainers"]
    init_mounts = {m["name"]: m for m in init["volumeMounts"]}
    assert init_mounts["root-key-secret"]["readOnly"] is True


def test_init_container_copies_the_key_so_the_operator_accepts_it(pod: Obj, tmp_path: Path) -> None:
    """The kubelet makes a Secret file 0440 under fsGroup; the copy must be 0400 and load."""
    source, target = tmp_path / "secret", tmp_path / "memory"
    source.mkdir()
    target.mkdir()
    (source / "root.key").write_text(base64.b64encode(os.urandom(32)).decode())
    (source / "root.key").chmod(0o440)
    command = [
        arg.replace("/etc/kms-operator/root-key-secret", str(source)).replace(
            "/etc/kms-operator/root-key", str(target)
        )
        for arg in pod["initContainers"][0]["command"]
    ]
    command[0] = shutil.which("python3") or "python3"
    for _ in range(2):  # a restarted pod runs it again over the existing copy
        subprocess.run(command, check=True, timeout=30)
    copied = target / "root.key"
    assert stat.S_IMODE(copied.stat().st_mode) == 0o400
    assert copied.read_bytes() == (source / "root.key").read_bytes()
    load_root_key_file(copied, create=False)


# -- root key ------------------------------------------------------------------------------


def test_root_key_secret_is_kept_immutable_and_32_random_bytes(helm: Path) -> None:
    first = one(render(helm), "Secret")
    second = one(render(helm), "Secret")
    assert first["metadata"]["name"] == "kms-operator-root-key"
    assert first["metadata"]["annotations"][KEEP] == "keep"
    assert first["immutable"] is True
    key = base64.b64decode(first["data"]["root.key"])
    assert len(key) == 32
    # Without a cluster to look the Secret up in, each render draws a fresh key.
    assert second["data"]["root.key"] != first["data"]["root.key"]


def test_existing_root_key_secret(helm: Path) -> None:
    objects = render(helm, "rootKey.existingSecret=my-root-key", "rootKey.secretKey=key")
    assert not [o for o in objects if o["kind"] == "Secret"]
    volumes = one(objects, "StatefulSet")["spec"]["template"]["spec"]["volumes"]
    secret = next(v["secret"] for v in volumes if v["name"] == "root-key-secret")
    assert secret["secretName"] == "my-root-key"
    assert secret["items"] == [{"key": "key", "path": "root.key"}]


# -- CRDs ----------------------------------------------------------------------------------


def test_chart_crds_are_the_repository_crds() -> None:
    chart_crds = sorted(p.name for p in (CHART / "crds").iterdir())
    repo_crds = sorted(p.name for p in REPO_CRDS.glob("*.yaml"))
    assert chart_crds == repo_crds, "charts/kms-operator/crds/ must hold exactly crds/*.yaml"
    for name in repo_crds:
        assert (CHART / "crds" / name).read_bytes() == (REPO_CRDS / name).read_bytes(), (
            f"charts/kms-operator/crds/{name} differs from crds/{name}: cp crds/*.yaml "
            "charts/kms-operator/crds/"
        )


def test_crds_are_rendered_from_crds_directory_only(helm: Path, default: list[Obj]) -> None:
    # Helm installs crds/ once and never deletes them; templates must not hold CRDs (Helm
    # would delete those on uninstall).
    assert not [o for o in default if o["kind"] == "CustomResourceDefinition"]
    crds = [o for o in render(helm, crds=True) if o["kind"] == "CustomResourceDefinition"]
    assert sorted(c["metadata"]["name"] for c in crds) == [
        "customermasterkeys.kms.cmk.dev",
        "datakeys.kms.cmk.dev",
        "keymaterialimports.kms.cmk.dev",
    ]


def test_crds_annotated_keep() -> None:
    for path in sorted((CHART / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        assert (crd["metadata"].get("annotations") or {}).get(KEEP) == "keep", path.name


# -- RBAC ----------------------------------------------------------------------------------


def _rules(obj: Obj) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, resourceName or '') for every combination a role grants."""
    granted = set()
    for rule in obj["rules"]:
        assert "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or [""]:
                        granted.add((group, resource, verb, name))
    return granted


def _expand(spec: dict[tuple[str, str], str], name: str = "") -> set[tuple[str, str, str, str]]:
    return {
        (group, resource, verb, name)
        for (group, resource), verbs in spec.items()
        for verb in verbs.split()
    }


KMS = {
    # create, patch, delete: also the AWS API's lifecycle operations, for callers who hold them.
    ("kms.cmk.dev", "customermasterkeys"): "get list watch create patch update delete",
    ("kms.cmk.dev", "customermasterkeys/status"): "get patch update",
    ("kms.cmk.dev", "keymaterialimports"): "get list watch create patch update delete",
    ("kms.cmk.dev", "datakeys"): "get list watch patch update",
    ("kms.cmk.dev", "keymaterialimports/status"): "get patch update",
    ("kms.cmk.dev", "datakeys/status"): "get patch update",
    ("", "events"): "create patch",
}
# One merged rule for Secrets (DataKeys get/create/update the Secret they own, KeyMaterialImports
# get the one they name; never list, watch, patch nor delete), and the owner's finalizers for
# blockOwnerDeletion under OwnerReferencesPermissionEnforcement.
SECRETS = {
    ("", "secrets"): "get create update",
    ("kms.cmk.dev", "datakeys/finalizers"): "update",
}
CLUSTER = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): "get list watch",
    ("authentication.k8s.io", "tokenreviews"): "create",
    ("authorization.k8s.io", "subjectaccessreviews"): "create",
    # Keys are bound to their namespace's UID (issue 8, item 1): one namespace at a time.
    ("", "namespaces"): "get",
}
CA_PUBLISHER = _expand({("", "configmaps"): "create"}) | _expand(
    {("", "configmaps"): "get update patch"}, "kms-operator-ca"
)


def _no_wildcards_nor_secret_listing(objects: list[Obj]) -> None:
    for obj in objects:
        if obj["kind"] not in ("ClusterRole", "Role"):
            continue
        for group, resource, verb, name in _rules(obj):
            assert "*" not in (group, resource, verb), obj["metadata"]["name"]
            if resource == "secrets":
                # One Secret at a time, by name: never list, watch (a cache of every Secret)
                # nor patch.
                assert verb in ("get", "create", "update"), verb
            assert verb not in ("deletecollection", "escalate", "bind", "impersonate")
            # Deletes: only the objects of the AWS API's ScheduleKeyDeletion and
            # DeleteImportedKeyMaterial (never a CRD, a Secret, a ConfigMap).
            if verb == "delete":
                assert (group, resource) in (
                    ("kms.cmk.dev", "customermasterkeys"),
                    ("kms.cmk.dev", "keymaterialimports"),
                ), resource
            # Webhooks: never mutating ones, never create (issue 8, item 5).
            assert resource != "mutatingwebhookconfigurations", obj["metadata"]["name"]
            if resource == "validatingwebhookconfigurations":
                assert (verb, name) == ("patch", WEBHOOK_CONFIGURATION)


def test_rbac_cluster_wide(default: list[Obj]) -> None:
    _no_wildcards_nor_secret_listing(default)
    assert _rules(one(default, "ClusterRole")) == _expand(CLUSTER) | _expand(KMS) | _expand(SECRETS)
    assert _rules(one(default, "Role", "kms-operator-ca-publisher")) == CA_PUBLISHER
    assert [r["metadata"]["name"] for r in default if r["kind"] == "Role"] == [
        "kms-operator-ca-publisher"
    ]
    for binding in (one(default, "ClusterRoleBinding"), one(default, "RoleBinding")):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "kms-operator", "namespace": NAMESPACE}
        ]
    assert one(default, "ServiceAccount")["metadata"]["name"] == "kms-operator"


def test_rbac_watched_namespaces(helm: Path) -> None:
    objects = render(helm, "watchNamespaces={team-a,team-b}")
    _no_wildcards_nor_secret_listing(objects)
    assert _rules(one(objects, "ClusterRole")) == _expand(CLUSTER) | _expand(
        {("", "namespaces"): "list watch"}
    )
    roles = {
        (r["metadata"]["namespace"], r["metadata"]["name"]): r
        for r in objects
        if r["kind"] == "Role"
    }
    assert set(roles) == {
        ("team-a", "kms-operator"),
        ("team-b", "kms-operator"),
        (NAMESPACE, "kms-operator-ca-publisher"),
    }
    for namespace in ("team-a", "team-b"):
        assert _rules(roles[namespace, "kms-operator"]) == _expand(KMS) | _expand(SECRETS)
        binding = one(
            [o for o in objects if o["metadata"].get("namespace") == namespace], "RoleBinding"
        )
        assert binding["roleRef"]["name"] == "kms-operator"
        assert binding["subjects"][0]["namespace"] == NAMESPACE


def test_rbac_webhook(helm: Path) -> None:
    """Issue 8, item 5: the chart creates the ValidatingWebhookConfiguration; the operator may
    patch that one only (no create, no mutating webhooks), under the name it patches."""
    objects = render(helm, "webhook.enabled=true")
    _no_wildcards_nor_secret_listing(objects)
    granted = {
        rule
        for rule in _rules(one(objects, "ClusterRole"))
        if rule[0] == "admissionregistration.k8s.io"
    }
    assert granted == {
        (
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
            "patch",
            WEBHOOK_CONFIGURATION,
        )
    }
    configuration = one(objects, "ValidatingWebhookConfiguration")
    assert configuration["metadata"]["name"] == WEBHOOK_CONFIGURATION
    assert configuration["webhooks"] == []  # the operator fills them in
    assert not [o for o in objects if o["kind"] == "MutatingWebhookConfiguration"]
    service = one(objects, "Service")
    assert [p["name"] for p in service["spec"]["ports"]] == ["https", "webhook"]
    args = one(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--webhook" in args


def test_rbac_off(helm: Path) -> None:
    objects = render(helm, "rbac.create=false")
    assert not [o for o in objects if o["kind"].endswith(("Role", "RoleBinding"))]


# -- admission policies (issue 8, items 3b and 5) -------------------------------------------


def _policies(objects: list[Obj]) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "ValidatingAdmissionPolicy"}


def _bindings(objects: list[Obj]) -> dict[str, Obj]:
    return {
        o["metadata"]["name"]: o for o in objects if o["kind"] == "ValidatingAdmissionPolicyBinding"
    }


def test_datakey_policy_checks_the_requesting_users_verbs(default: list[Obj]) -> None:
    policy = _policies(default)["kms-operator-datakeys"]
    assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert (rule["apiGroups"], rule["resources"], rule["operations"]) == (
        ["kms.cmk.dev"],
        ["datakeys"],
        ["CREATE", "UPDATE"],
    )
    variables = {v["name"]: v["expression"] for v in spec["variables"]}
    assert "authorizer.group('kms.cmk.dev').resource('customermasterkeys')" in variables["keys"]
    assert ".namespace(request.namespace)" in variables["keys"]
    assert "'kms-default-datakeys'" in variables["keyName"]
    checks = [v["expression"] for v in spec["validations"]]
    assert "check('generatedatakey').allowed()" in checks[0]
    assert "check('decrypt').allowed()" in checks[1] and "variables.plaintext" in checks[1]
    binding = _bindings(default)["kms-operator-datakeys"]["spec"]
    assert binding == {"policyName": "kms-operator-datakeys", "validationActions": ["Deny"]}


def test_datakey_policy_binding_follows_watched_namespaces(helm: Path) -> None:
    binding = _bindings(render(helm, "watchNamespaces={team-a,team-b}"))["kms-operator-datakeys"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
    ]


def test_operator_secrets_policy_matches_the_operators_service_account(helm: Path) -> None:
    for sets, account in (
        ((), "kms-operator"),
        (("serviceAccount.name=keys",), "keys"),
    ):
        policy = _policies(render(helm, *sets))["kms-operator-operator-secrets"]["spec"]
        (rule,) = policy["matchConstraints"]["resourceRules"]
        assert (rule["apiGroups"], rule["resources"], rule["operations"]) == (
            [""],
            ["secrets"],
            ["CREATE", "UPDATE"],
        )
        (condition,) = policy["matchConditions"]
        assert condition["expression"] == (
            f"request.userInfo.username == 'system:serviceaccount:{NAMESPACE}:{account}'"
        )
        (check,) = policy["validations"]
        assert "object.type == 'kms.cmk.dev/data-key'" in check["expression"]


def test_reading_secrets_for_imports_can_be_turned_off(default: list[Obj], helm: Path) -> None:
    assert "kms-operator-keymaterialimports" not in _policies(default)
    objects = render(helm, "rbac.readSecretsForImports=false")
    policy = _policies(objects)["kms-operator-keymaterialimports"]["spec"]
    (check,) = policy["validations"]
    assert "encryptedKeyMaterialSecretRef" in check["expression"]
    assert "spec.encryptedKeyMaterial" in check["message"]
    assert "kms-operator-keymaterialimports" in _bindings(objects)
    # DataKeys still read the Secret they own: the Secrets rule is the same.
    assert _rules(one(objects, "ClusterRole")) == _rules(one(default, "ClusterRole"))


def test_admission_policies_can_be_turned_off(helm: Path) -> None:
    objects = render(helm, "admissionPolicies.enabled=false")
    assert not [o for o in objects if o["kind"].startswith("ValidatingAdmissionPolicy")]


def test_install_yaml_carries_the_admission_policies() -> None:
    objects = [doc for doc in yaml.safe_load_all(INSTALL.read_text()) if doc]
    assert sorted(_policies(objects)) == ["kms-operator-datakeys", "kms-operator-operator-secrets"]
    assert sorted(_bindings(objects)) == ["kms-operator-datakeys", "kms-operator-operator-secrets"]


# -- Service, ServiceMonitor, NetworkPolicy --------------------------------------------------


def test_service(default: list[Obj]) -> None:
    service = one(default, "Service")
    assert service["metadata"]["name"] == "kms-operator"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {
            "name": "https",
            "port": 8443,
            "targetPort": "https",
            "protocol": "TCP",
            "appProtocol": "https",
        }
    ]
    assert service["spec"]["selector"] == {
        "app.kubernetes.io/name": "kms-operator",
        "app.kubernetes.io/instance": RELEASE,
    }


def test_optional_objects_off_by_default(default: list[Obj]) -> None:
    kinds = {o["kind"] for o in default}
    assert kinds == {
        "ServiceAccount",
        "Secret",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "StatefulSet",
        # On by default (issue 8, items 3 and 5): the API server's own checks.
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }


def test_service_monitor(helm: Path) -> None:
    monitor = one(render(helm, "serviceMonitor.enabled=true"), "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["scheme"]) == (
        "https",
        "/metrics",
        "https",
    )
    assert endpoint["tlsConfig"]["serverName"] == f"kms-operator.{NAMESPACE}.svc"
    assert endpoint["tlsConfig"]["ca"]["configMap"] == {"name": "kms-operator-ca", "key": "ca.crt"}


def test_network_policy(helm: Path) -> None:
    policy = one(render(helm, "networkPolicy.enabled=true"), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [{"ports": [{"port": "https", "protocol": "TCP"}]}]
    peers = [{"namespaceSelector": {"matchLabels": {"kms-client": "true"}}}]
    result = helm_run(
        helm,
        "template",
        "--set",
        "networkPolicy.enabled=true,webhook.enabled=true",
        "--set-json",
        f"networkPolicy.ingressFrom={json.dumps(peers)}",
    )
    assert result.returncode == 0, result.stderr
    policy = one(list(yaml.safe_load_all(result.stdout)), "NetworkPolicy")["spec"]
    assert policy["ingress"] == [
        {"ports": [{"port": "https", "protocol": "TCP"}], "from": peers},
        {"ports": [{"port": "webhook", "protocol": "TCP"}]},
    ]


# -- NOTES ---------------------------------------------------------------------------------


@pytest.fixture
def notes_chart(tmp_path: Path) -> Iterator[Path]:
    """A copy of the chart that renders NOTES.txt as a value (helm template skips NOTES)."""
    chart = tmp_path / "kms-operator"
    shutil.copytree(CHART, chart)
    shutil.copy(CHART / "templates" / "NOTES.txt", chart / "notes-source.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        'notes: {{ tpl (.Files.Get "notes-source.txt") . | toJson }}\n'
    )
    yield chart


def _notes(helm: Path, chart: Path, *sets: str) -> str:
    args = ["template", "--namespace", NAMESPACE, "--show-only", "templates/zz-notes.yaml"]
    for value in sets:
        args += ["--set", value]
    result = helm_run(helm, *args, chart=chart)
    assert result.returncode == 0, result.stderr
    notes: str = yaml.safe_load(result.stdout)["notes"]
    return notes


def test_notes(helm: Path, notes_chart: Path) -> None:
    notes = _notes(helm, notes_chart)
    assert "ONE pod" in notes
    assert "kmsctl encrypt" in notes
    assert f"--server https://kms-operator.{NAMESPACE}.svc:8443 --ca-file" in notes
    assert "kms-operator store backup" in notes
    assert "Secret kms-operator-root-key" in notes
    assert "never deletes keys" in notes
    assert "WARNING" not in notes


def test_notes_warn_about_day_seconds(helm: Path, notes_chart: Path) -> None:
    notes = _notes(helm, notes_chart, "developmentOnly.daySeconds=60")
    assert "WARNING: developmentOnly.daySeconds=60" in notes
    assert "never in production" in notes


# -- manifests/install -----------------------------------------------------------------------


def test_install_yaml_is_up_to_date(helm: Path, tmp_path: Path) -> None:
    output = tmp_path / "kms-operator.yaml"
    env = {**os.environ, "KUBEBUILDER_ASSETS": str(helm.parent)}
    subprocess.run([str(RENDER_INSTALL), str(output)], check=True, env=env, timeout=120)
    assert INSTALL.read_text() == output.read_text(), (
        "manifests/install/kms-operator.yaml is stale: run hack/render-install.sh"
    )


def test_install_yaml_carries_no_root_key() -> None:
    objects = [doc for doc in yaml.safe_load_all(INSTALL.read_text()) if doc]
    assert not [o for o in objects if o["kind"] == "Secret"]
    assert objects[0]["kind"] == "Namespace"
    assert objects[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert len([o for o in objects if o["kind"] == "CustomResourceDefinition"]) == 3

"""Real callers for the integration tests: ServiceAccounts, their Roles, their tokens from the
TokenRequest API, and AWS clients that carry such a token as their session token."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import boto3
from botocore.config import Config
from kubernetes import client
from tests.integration.operator_fixtures import OperatorProcess

GROUP = "kms.cmk.dev"
#: The audience the operator's API expects by default.
KMS_AUDIENCE = "kms.cmk.dev"


def service_account(
    kube_api: client.ApiClient,
    namespace: str,
    name: str,
    verbs: list[str] | Mapping[str, list[str]],
    audiences: list[str] | None = None,
) -> str:
    """A ServiceAccount bound to a Role with ``verbs`` on customermasterkeys (or, given a
    mapping, on each resource of our group the verbs it maps to); its token for ``audiences``
    (default: the KMS's; ``[]``: the API server's own default)."""
    rules = {"customermasterkeys": verbs} if isinstance(verbs, list) else verbs
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
    )
    if verbs:
        rbac.create_namespaced_role(
            namespace,
            client.V1Role(
                metadata=client.V1ObjectMeta(name=name),
                rules=[
                    client.V1PolicyRule(api_groups=[GROUP], resources=[resource], verbs=granted)
                    for resource, granted in rules.items()
                ],
            ),
        )
        rbac.create_namespaced_role_binding(
            namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name=name),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name=name
                ),
                subjects=[
                    client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)
                ],
            ),
        )
    return service_account_token(
        kube_api, namespace, name, [KMS_AUDIENCE] if audiences is None else audiences
    )


def service_account_token(
    kube_api: client.ApiClient, namespace: str, name: str, audiences: list[str]
) -> str:
    answer = client.CoreV1Api(kube_api).create_namespaced_service_account_token(
        name,
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=audiences or None, expiration_seconds=3600)
        ),
    )
    return str(answer.status.token)


def aws_environment(operator: OperatorProcess, token: str) -> dict[str, str]:
    """What every AWS SDK and tool reads: endpoint, CA bundle, credentials, region."""
    return {
        "AWS_ENDPOINT_URL_KMS": operator.api_url,
        "AWS_CA_BUNDLE": str(operator.ca_file),
        "AWS_ACCESS_KEY_ID": "not-a-credential",
        "AWS_SECRET_ACCESS_KEY": "not-a-credential",
        "AWS_SESSION_TOKEN": token,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def kms_client(operator: OperatorProcess, token: str) -> Any:
    """A boto3 KMS client of the operator's API for ``token``; one attempt per call (a retried
    CreateKey would make a second key)."""
    return boto3.client(
        "kms",
        endpoint_url=operator.api_url,
        verify=str(operator.ca_file),
        region_name="us-east-1",
        aws_access_key_id="not-a-credential",
        aws_secret_access_key="not-a-credential",
        aws_session_token=token,
        config=Config(retries={"total_max_attempts": 1}, read_timeout=60),
    )

"""TokenReview, SubjectAccessReview and the CA ConfigMap: what the API asks of Kubernetes.

Synchronous ``kubernetes`` client calls; the API runs them with :func:`asyncio.to_thread`.
Results are plain dataclasses so that nothing above this module sees a client model. Tokens
are passed through, never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kubernetes import client

log = logging.getLogger(__name__)

CA_CONFIGMAP_KEY = "ca.crt"

#: The client type, re-exported so that callers outside ``kube`` need not import ``kubernetes``.
ApiClient = client.ApiClient


@dataclass(frozen=True, slots=True)
class UserInfo:
    """Who a token belongs to, as TokenReview says (or the static-token file)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())

    @classmethod
    def of(
        cls,
        username: str,
        uid: str = "",
        groups: Sequence[str] = (),
        extra: Mapping[str, Sequence[str]] | None = None,
    ) -> UserInfo:
        return cls(
            username,
            uid,
            tuple(groups),
            tuple(sorted((k, tuple(v)) for k, v in (extra or {}).items())),
        )


@dataclass(frozen=True, slots=True)
class AccessDecision:
    allowed: bool
    reason: str = ""


def review_token(
    api_client: client.ApiClient, token: str, audiences: Sequence[str] = ()
) -> UserInfo | None:
    """The user the token authenticates, or None when the API server does not accept it."""
    spec = client.V1TokenReviewSpec(token=token, audiences=list(audiences) or None)
    answer = client.AuthenticationV1Api(api_client).create_token_review(
        client.V1TokenReview(spec=spec)
    )
    status = answer.status
    if status is None or not status.authenticated or status.user is None:
        if status is not None and status.error:
            log.debug("token review refused a token: %s", status.error)
        return None
    user = status.user
    if not user.username:
        return None
    return UserInfo.of(user.username, user.uid or "", user.groups or (), user.extra or {})


def review_access(
    api_client: client.ApiClient,
    user: UserInfo,
    *,
    verb: str,
    group: str,
    resource: str,
    namespace: str,
    name: str | None,
) -> AccessDecision:
    """Whether ``user`` may ``verb`` the resource, as SubjectAccessReview says."""
    spec = client.V1SubjectAccessReviewSpec(
        user=user.username,
        uid=user.uid or None,
        groups=list(user.groups) or None,
        extra={k: list(v) for k, v in user.extra} or None,
        resource_attributes=client.V1ResourceAttributes(
            group=group, resource=resource, verb=verb, namespace=namespace, name=name
        ),
    )
    answer = client.AuthorizationV1Api(api_client).create_subject_access_review(
        client.V1SubjectAccessReview(spec=spec)
    )
    status = answer.status
    allowed = bool(status is not None and status.allowed and not status.denied)
    return AccessDecision(allowed, (status.reason or "") if status is not None else "")


def publish_ca(api_client: client.ApiClient, namespace: str, name: str, ca_pem: bytes) -> None:
    """Create or update ConfigMap ``namespace/name`` with the API's CA under ``ca.crt``."""
    core = client.CoreV1Api(api_client)
    data = {CA_CONFIGMAP_KEY: ca_pem.decode("ascii")}
    labels = {"app.kubernetes.io/name": "kms-operator", "app.kubernetes.io/component": "api"}
    body = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=labels), data=data
    )
    try:
        core.create_namespaced_config_map(namespace, body)
        log.info("published the API's CA in ConfigMap %s/%s", namespace, name)
        return
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    core.patch_namespaced_config_map(
        name, namespace, {"metadata": {"labels": labels}, "data": data}
    )
    log.info("updated the API's CA in ConfigMap %s/%s", namespace, name)

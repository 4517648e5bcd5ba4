"""TokenReview, SubjectAccessReview, TokenRequest and the CA ConfigMap: what the API (and
kmsctl) ask of Kubernetes.

Synchronous ``kubernetes`` client calls, each with a request timeout; the API runs them on its
review threads (:class:`kms_operator.serving.auth.ReviewPool`). Results are plain dataclasses so
that nothing above this module sees a client model. Tokens are passed through, never logged.

A token is accepted only for an audience the KMS asked for: TokenReview is sent with the
KMS's audiences, and the answer's ``status.audiences`` must name one of them. (The API server
already refuses a token for another audience when ``spec.audiences`` is set; checking the
answer as well is what the TokenReview API asks of its clients, and it keeps an authenticator
that is not audience-aware from letting a token for the API server through.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kubernetes import client

log = logging.getLogger(__name__)

CA_CONFIGMAP_KEY = "ca.crt"
#: Connect and read timeouts of every call here, seconds: a slow API server must not hold a
#: review thread (and with it a slot of the API's review pool) for long.
REQUEST_TIMEOUT = (3.0, 5.0)

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


class TokenRequestError(Exception):
    """The API server refused to issue a ServiceAccount token; the message says why."""


def review_token(
    api_client: client.ApiClient, token: str, audiences: Sequence[str]
) -> UserInfo | None:
    """The user the token authenticates for one of ``audiences``, or None when refused.

    Refused: the API server does not accept the token, or its answer does not name one of
    ``audiences`` in ``status.audiences`` (a token made for another audience, such as the
    Kubernetes API server's own).
    """
    wanted = [a for a in audiences if a]
    if not wanted:
        raise ValueError("review_token needs the audiences a token must be made for")
    spec = client.V1TokenReviewSpec(token=token, audiences=wanted)
    answer = client.AuthenticationV1Api(api_client).create_token_review(
        client.V1TokenReview(spec=spec), _request_timeout=REQUEST_TIMEOUT
    )
    status = answer.status
    if status is None or not status.authenticated or status.user is None:
        if status is not None and status.error:
            log.debug("token review refused a token: %s", status.error)
        return None
    if not set(status.audiences or ()) & set(wanted):
        log.debug(
            "token review: the token's audiences %s include none of %s; refused",
            list(status.audiences or ()),
            wanted,
        )
        return None
    user = status.user
    if not user.username:
        return None
    return UserInfo.of(user.username, user.uid or "", user.groups or (), user.extra or {})


def request_token(
    api_client: client.ApiClient,
    namespace: str,
    service_account: str,
    *,
    audiences: Sequence[str],
    expiration_seconds: int = 600,
) -> str:
    """A new token of ServiceAccount ``namespace/service_account`` for ``audiences``
    (TokenRequest; the caller needs ``create`` on ``serviceaccounts/token``)."""
    body = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=list(audiences), expiration_seconds=expiration_seconds
        )
    )
    try:
        answer = client.CoreV1Api(api_client).create_namespaced_service_account_token(
            service_account, namespace, body, _request_timeout=REQUEST_TIMEOUT
        )
    except client.ApiException as exc:
        raise TokenRequestError(
            f"TokenRequest for ServiceAccount {namespace}/{service_account} refused: "
            f"{exc.status} {_api_message(exc)}"
        ) from None
    token = answer.status.token if answer.status is not None else None
    if not token:
        raise TokenRequestError(
            f"TokenRequest for ServiceAccount {namespace}/{service_account} returned no token"
        )
    return str(token)


def _api_message(exc: client.ApiException) -> str:
    try:
        message = json.loads(exc.body or "")["message"]
    except (ValueError, KeyError, TypeError):
        return str(exc.reason or "")
    return str(message)


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
        client.V1SubjectAccessReview(spec=spec), _request_timeout=REQUEST_TIMEOUT
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

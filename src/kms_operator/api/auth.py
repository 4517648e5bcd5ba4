"""Who is calling and what they may do: Bearer token → user → RBAC verb on a CMK.

* :class:`TokenReviewAuthenticator` asks the API server (TokenReview, with the configured
  audiences); :class:`SubjectAccessReviewAuthorizer` asks it whether the user holds the verb
  ``encrypt`` / ``decrypt`` / ``generatedatakey`` / ``get`` on ``customermasterkeys``
  (group ``kms.cmk.dev``) named after the CMK. Both cache answers, positive and negative,
  for ``auth_cache_seconds``: a removed RoleBinding stops working within that time.
* :class:`StaticTokens` reads a ``token,username,group1|group2`` file and authorizes every
  static user for everything. It exists for local development only.

The review functions are injected (synchronous callables run in a thread), so unit tests and
the benchmark replace the API server without touching the caching. Tokens are never logged
and are kept in caches only as SHA-256 digests.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Protocol

from kms_operator.errors import AccessDenied, KmsError, Unauthenticated
from kms_operator.kube.reviews import AccessDecision, UserInfo

from .caching import TtlCache

log = logging.getLogger(__name__)

API_GROUP = "kms.cmk.dev"
RESOURCE = "customermasterkeys"

_MISS = object()

TokenReviewFn = Callable[[str], UserInfo | None]
AccessReviewFn = Callable[[UserInfo, str, str, str | None], AccessDecision]


class ReviewUnavailable(KmsError):
    """The API server could not answer a TokenReview or SubjectAccessReview."""

    code: ClassVar[str] = "InternalError"
    status: ClassVar[int] = 500
    retryable: ClassVar[bool] = True


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> UserInfo:
        """The caller; raises :class:`Unauthenticated` for a token that is not accepted."""


class Authorizer(Protocol):
    async def authorize(self, user: UserInfo, verb: str, namespace: str, name: str | None) -> None:
        """Returns when allowed; raises :class:`AccessDenied` otherwise."""


def bearer_token(header: str | None) -> str:
    if not header:
        raise Unauthenticated("an Authorization: Bearer <token> header is required")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return token


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _denied(user: UserInfo, verb: str, namespace: str, name: str | None) -> AccessDenied:
    target = f"{RESOURCE}.{API_GROUP}"
    if name is not None:
        target += f" {name!r}"
    return AccessDenied(
        f"user {user.username!r} may not {verb} {target} in namespace {namespace!r}"
    )


class TokenReviewAuthenticator:
    def __init__(self, review: TokenReviewFn, cache_seconds: float) -> None:
        self._review = review
        self.cache: TtlCache[bytes, UserInfo | None] = TtlCache(cache_seconds)

    async def authenticate(self, token: str) -> UserInfo:
        key = _digest(token)
        cached = self.cache.peek(key, _MISS)
        if cached is not _MISS:
            if cached is None:
                raise Unauthenticated("the bearer token is not valid")
            return cached  # type: ignore[return-value]

        async def load() -> UserInfo | None:
            try:
                return await asyncio.to_thread(self._review, token)
            except Exception as exc:
                log.warning("TokenReview failed: %s", type(exc).__name__)
                raise ReviewUnavailable(
                    "the caller could not be checked with the Kubernetes API; retry later"
                ) from None

        user = await self.cache.get_or_load(key, load)
        if user is None:
            raise Unauthenticated("the bearer token is not valid")
        return user


class SubjectAccessReviewAuthorizer:
    def __init__(self, review: AccessReviewFn, cache_seconds: float) -> None:
        self._review = review
        self.cache: TtlCache[tuple[UserInfo, str, str, str | None], bool] = TtlCache(cache_seconds)

    async def authorize(self, user: UserInfo, verb: str, namespace: str, name: str | None) -> None:
        key = (user, verb, namespace, name)
        cached = self.cache.peek(key, _MISS)
        if cached is True:
            return
        if cached is False:
            raise _denied(user, verb, namespace, name)

        async def load() -> bool:
            try:
                decision = await asyncio.to_thread(self._review, user, verb, namespace, name)
            except Exception as exc:
                log.warning("SubjectAccessReview failed: %s", type(exc).__name__)
                raise ReviewUnavailable(
                    "the caller's access could not be checked with the Kubernetes API; retry later"
                ) from None
            return decision.allowed

        if not await self.cache.get_or_load(key, load):
            raise _denied(user, verb, namespace, name)


class StaticTokens:
    """Local development only: static users from a file, each allowed everything."""

    def __init__(self, users: dict[bytes, UserInfo]) -> None:
        self._users = users

    @classmethod
    def from_file(cls, path: Path) -> StaticTokens:
        users: dict[bytes, UserInfo] = {}
        for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p.strip() for p in line.split(",")]
            if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
                raise ValueError(f"{path}:{number}: expected 'token,username,group1|group2'")
            groups = tuple(g for g in (parts[2].split("|") if len(parts) == 3 else ()) if g)
            users[_digest(parts[0])] = UserInfo.of(parts[1], "", groups)
        log.warning(
            "static-token mode (%d users from %s): every static user may use every key; "
            "for local development only",
            len(users),
            path,
        )
        return cls(users)

    async def authenticate(self, token: str) -> UserInfo:
        user = self._users.get(_digest(token))
        if user is None:
            raise Unauthenticated("the bearer token is not valid")
        return user

    async def authorize(self, user: UserInfo, verb: str, namespace: str, name: str | None) -> None:
        return None

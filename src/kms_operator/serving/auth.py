"""Who is calling and what they may do: Bearer token → user → RBAC verb on a CMK.

* :class:`TokenReviewAuthenticator` asks the API server (TokenReview, with the configured
  audiences; :func:`kms_operator.kube.reviews.review_token` refuses a token whose reviewed
  audiences do not include one of them); :class:`SubjectAccessReviewAuthorizer` asks it
  whether the user holds the verb ``encrypt`` / ``decrypt`` / ``generatedatakey`` / ``get``
  on ``customermasterkeys`` (group ``kms.cmk.dev``) named after the CMK. Both cache answers
  for ``auth_cache_seconds`` (a removed RoleBinding stops working within that time), positive
  and negative answers in separate bounded caches, so a flood of refused tokens or names never
  evicts the answers of callers who are let in.
* Unauthenticated callers must not be able to slow the service down: a token that is not
  shaped like a ServiceAccount token (a JWT: three base64url segments, at most
  :data:`MAX_TOKEN_CHARS`) is refused without a review, and reviews run on a
  :class:`ReviewPool`: their own few threads (never the loop's default executor, which Kopf
  uses too), at most ``in_flight`` at once; a caller who finds every slot taken waits at most
  ``queue_seconds`` and is then answered 503 ``ServiceUnavailable`` (retry later). Cached
  answers never wait for a slot.
* :class:`StaticTokens` reads a ``token,username,group1|group2`` file and authorizes every
  static user for everything. It exists for local development only.

The review functions are injected (synchronous callables run on the pool), so unit tests and
the benchmark replace the API server without touching the caching. Tokens are never logged
and are kept in caches only as SHA-256 digests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Protocol, TypeVar

from kms_operator.contract import CMK_PLURAL, GROUP
from kms_operator.errors import AccessDenied, KmsError, Unauthenticated
from kms_operator.kube.reviews import AccessDecision, UserInfo

from .caching import SingleFlight, TtlCache

log = logging.getLogger(__name__)

API_GROUP = GROUP
RESOURCE = CMK_PLURAL

#: Longest bearer token sent to TokenReview (ServiceAccount tokens are about 1 KiB).
MAX_TOKEN_CHARS = 8 * 1024
#: Accepted answers kept (callers let in), and refused ones, kept apart and fewer.
MAX_ACCEPTED_ANSWERS = 10_000
MAX_REFUSED_ANSWERS = 1_000

NOT_ACCEPTED_MESSAGE = (
    "the bearer token is not valid (a ServiceAccount token made for the KMS's audience is needed)"
)

_MISS = object()
#: A JWT in compact serialization: header.payload.signature, each base64url without padding.
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

T = TypeVar("T")
TokenReviewFn = Callable[[str], UserInfo | None]
AccessReviewFn = Callable[[UserInfo, str, str, str | None, str], AccessDecision]
#: What an access answer is cached under: user, verb, namespace, object name, resource.
AccessKey = tuple[UserInfo, str, str, str | None, str]


class ReviewUnavailable(KmsError):
    """The API server could not answer a TokenReview or SubjectAccessReview."""

    code: ClassVar[str] = "InternalError"
    status: ClassVar[int] = 500
    retryable: ClassVar[bool] = True


class ReviewsBusy(KmsError):
    """Every review slot stayed taken for ``queue_seconds``: the caller should retry later."""

    code: ClassVar[str] = "ServiceUnavailable"
    status: ClassVar[int] = 503
    retryable: ClassVar[bool] = True


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> UserInfo:
        """The caller; raises :class:`Unauthenticated` for a token that is not accepted."""


class Authorizer(Protocol):
    async def authorize(
        self,
        user: UserInfo,
        verb: str,
        namespace: str,
        name: str | None,
        resource: str = RESOURCE,
    ) -> None:
        """Returns when ``user`` may ``verb`` the ``resource`` (of group ``kms.cmk.dev``)
        named ``name`` (None: any) in ``namespace``; raises :class:`AccessDenied` otherwise."""


def bearer_token(header: str | None) -> str:
    if not header:
        raise Unauthenticated("an Authorization: Bearer <token> header is required")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return token


def looks_like_service_account_token(token: str) -> bool:
    """Whether ``token`` has the shape of a ServiceAccount token (a compact JWT), cheaply."""
    return len(token) <= MAX_TOKEN_CHARS and _JWT_SHAPE.fullmatch(token) is not None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _denied(
    user: UserInfo, verb: str, namespace: str, name: str | None, resource: str
) -> AccessDenied:
    target = f"{resource}.{API_GROUP}"
    if name is not None:
        target += f" {name!r}"
    return AccessDenied(
        f"user {user.username!r} may not {verb} {target} in namespace {namespace!r}"
    )


class ReviewPool:
    """Runs blocking review calls on a few threads of its own, a bounded number at a time.

    ``in_flight`` calls may be running or queued for a thread; a caller who finds them all
    taken waits for a slot at most ``queue_seconds``, then gets :class:`ReviewsBusy`. A slot
    is given back when the call's thread finishes, not when its caller gives up, so the bound
    holds even for callers that are cancelled.
    """

    def __init__(
        self,
        name: str,
        *,
        threads: int = 4,
        in_flight: int = 8,
        queue_seconds: float = 1.0,
    ) -> None:
        if threads < 1 or in_flight < threads:
            raise ValueError("a review pool needs threads >= 1 and in_flight >= threads")
        self.name = name
        self.threads = threads
        self.in_flight = in_flight
        self.queue_seconds = queue_seconds
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=f"kms-{name}"
        )
        self._slots = asyncio.Semaphore(in_flight)
        self._taken = 0
        self._refused = 0
        self._refusal_logged = -1e9

    def __repr__(self) -> str:
        return f"ReviewPool({self.name!r}, threads={self.threads}, in_flight={self.in_flight})"

    @property
    def busy(self) -> int:
        """Slots taken now (running or queued calls)."""
        return self._taken

    async def run(self, function: Callable[..., T], *args: object) -> T:
        await self._take_slot()
        loop = asyncio.get_running_loop()

        def give_back(_: concurrent.futures.Future[T]) -> None:
            # A closed loop has nobody waiting for a slot any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._give_back)

        try:
            future = self._executor.submit(function, *args)
        except BaseException:
            self._give_back()
            raise
        future.add_done_callback(give_back)
        return await asyncio.wrap_future(future)

    def _give_back(self) -> None:
        self._taken -= 1
        self._slots.release()

    async def _take_slot(self) -> None:
        try:
            if self._slots.locked():
                async with asyncio.timeout(self.queue_seconds):
                    await self._slots.acquire()
            else:
                await self._slots.acquire()
        except TimeoutError:
            self._note_refusal()
            raise ReviewsBusy(
                "too many callers are being checked with the Kubernetes API at once; "
                "retry in a moment"
            ) from None
        self._taken += 1

    def _note_refusal(self) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= 10.0:
            self._refusal_logged = now
            log.warning(
                "%s: all %d review slots busy for %.1f s; %d callers refused with 503 so far",
                self.name,
                self.in_flight,
                self.queue_seconds,
                self._refused,
            )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class TokenReviewAuthenticator:
    def __init__(
        self,
        review: TokenReviewFn,
        cache_seconds: float,
        *,
        pool: ReviewPool | None = None,
        max_accepted: int = MAX_ACCEPTED_ANSWERS,
        max_refused: int = MAX_REFUSED_ANSWERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._review = review
        self.pool = pool or ReviewPool("token-review")
        #: Accepted tokens (their digests) → the user.
        self.cache: TtlCache[bytes, UserInfo] = TtlCache(
            cache_seconds, max_entries=max_accepted, clock=clock
        )
        #: Refused tokens (their digests), apart: a flood of bad tokens evicts only its own.
        self.refused: TtlCache[bytes, bool] = TtlCache(
            cache_seconds, max_entries=max_refused, clock=clock
        )
        self._flights: SingleFlight[bytes, UserInfo | None] = SingleFlight()
        #: TokenReviews sent, for tests and the benchmark.
        self.reviews = 0

    async def authenticate(self, token: str) -> UserInfo:
        key = _digest(token)
        cached = self.cache.peek(key, _MISS)
        if cached is not _MISS:
            return cached  # type: ignore[return-value]
        if self.refused.peek(key, _MISS) is not _MISS:
            raise Unauthenticated(NOT_ACCEPTED_MESSAGE)
        if not looks_like_service_account_token(token):
            raise Unauthenticated(NOT_ACCEPTED_MESSAGE)
        user = await self._flights.run(key, lambda: self._load(key, token))
        if user is None:
            raise Unauthenticated(NOT_ACCEPTED_MESSAGE)
        return user

    async def _load(self, key: bytes, token: str) -> UserInfo | None:
        self.reviews += 1
        try:
            user = await self.pool.run(self._review, token)
        except ReviewsBusy:
            raise
        except Exception as exc:
            log.warning("TokenReview failed: %s", type(exc).__name__)
            raise ReviewUnavailable(
                "the caller could not be checked with the Kubernetes API; retry later"
            ) from None
        if user is None:
            self.refused.put(key, True)
        else:
            self.cache.put(key, user)
        return user


class SubjectAccessReviewAuthorizer:
    def __init__(
        self,
        review: AccessReviewFn,
        cache_seconds: float,
        *,
        pool: ReviewPool | None = None,
        max_allowed: int = MAX_ACCEPTED_ANSWERS,
        max_denied: int = MAX_REFUSED_ANSWERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._review = review
        self.pool = pool or ReviewPool("access-review")
        self.cache: TtlCache[AccessKey, bool] = TtlCache(
            cache_seconds, max_entries=max_allowed, clock=clock
        )
        self.denied: TtlCache[AccessKey, bool] = TtlCache(
            cache_seconds, max_entries=max_denied, clock=clock
        )
        self._flights: SingleFlight[AccessKey, bool] = SingleFlight()
        #: SubjectAccessReviews sent, for tests and the benchmark.
        self.reviews = 0

    async def authorize(
        self,
        user: UserInfo,
        verb: str,
        namespace: str,
        name: str | None,
        resource: str = RESOURCE,
    ) -> None:
        key = (user, verb, namespace, name, resource)
        if self.cache.peek(key, _MISS) is not _MISS:
            return
        if self.denied.peek(key, _MISS) is not _MISS:
            raise _denied(user, verb, namespace, name, resource)
        if not await self._flights.run(key, lambda: self._load(key)):
            raise _denied(user, verb, namespace, name, resource)

    async def _load(self, key: AccessKey) -> bool:
        self.reviews += 1
        try:
            decision = await self.pool.run(self._review, *key)
        except ReviewsBusy:
            raise
        except Exception as exc:
            log.warning("SubjectAccessReview failed: %s", type(exc).__name__)
            raise ReviewUnavailable(
                "the caller's access could not be checked with the Kubernetes API; retry later"
            ) from None
        (self.cache if decision.allowed else self.denied).put(key, True)
        return decision.allowed


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

    async def authorize(
        self,
        user: UserInfo,
        verb: str,
        namespace: str,
        name: str | None,
        resource: str = RESOURCE,
    ) -> None:
        return None

"""Authentication and authorization of the API: bearer parsing, the TTL cache (single flight,
expiry), TokenReview / SubjectAccessReview adapters with doubles, static tokens, and the
request bodies sent to the Kubernetes API (``kube.reviews``) with a fake client.

Also what keeps unauthenticated callers from slowing the service down: the token-shape check
before any review, the review pools (own threads, bounded slots, 503 beyond), and refused
answers cached apart from accepted ones."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kms_operator.errors import AccessDenied, Unauthenticated
from kms_operator.kube import reviews
from kms_operator.kube.reviews import AccessDecision, UserInfo
from kms_operator.serving.auth import (
    MAX_TOKEN_CHARS,
    ReviewPool,
    ReviewsBusy,
    ReviewUnavailable,
    StaticTokens,
    SubjectAccessReviewAuthorizer,
    TokenReviewAuthenticator,
    bearer_token,
    looks_like_service_account_token,
)
from kms_operator.serving.caching import TtlCache

pytestmark = pytest.mark.unit

ALICE = UserInfo.of("system:serviceaccount:a:app", "uid-1", ["system:serviceaccounts"],
                    {"authentication.kubernetes.io/pod-name": ["p-1"]})  # fmt: skip


def jwt(name: str) -> str:
    """A token with the shape of a ServiceAccount token (header.payload.signature)."""
    return f"eyJhbGciOiJSUzI1NiJ9.{name.encode().hex()}.c2lnbmF0dXJl"


GOOD, BAD = jwt("good"), jwt("bad")


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc.def") == "abc.def"
    assert bearer_token("bearer   abc") == "abc"
    for bad in (None, "", "Bearer", "Bearer  ", "Basic abc", "abc"):
        with pytest.raises(Unauthenticated):
            bearer_token(bad)


async def test_ttl_cache_expires_and_single_flights() -> None:
    clock = FakeTime()
    cache: TtlCache[str, int] = TtlCache(10, clock=clock)
    started = asyncio.Event()
    release = asyncio.Event()
    loads = 0

    async def load() -> int:
        nonlocal loads
        loads += 1
        started.set()
        await release.wait()
        return loads

    waiters = [asyncio.create_task(cache.get_or_load("k", load)) for _ in range(20)]
    await started.wait()
    release.set()
    assert await asyncio.gather(*waiters) == [1] * 20
    assert loads == 1
    assert await cache.get_or_load("k", load) == 1
    clock.now += 10.0
    assert cache.get("k") is None
    assert await cache.get_or_load("k", load) == 2


async def test_ttl_cache_does_not_cache_failures_and_is_bounded() -> None:
    cache: TtlCache[int, int] = TtlCache(10, max_entries=3)

    async def fail() -> int:
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        await cache.get_or_load(1, fail)
    assert len(cache) == 0
    for i in range(5):
        cache.put(i, i)
    assert len(cache) == 3 and cache.get(0) is None and cache.get(4) == 4


async def test_ttl_zero_caches_nothing() -> None:
    cache: TtlCache[int, int] = TtlCache(0)
    cache.put(1, 1)
    assert cache.get(1) is None


async def test_token_review_authenticator_caches_positive_and_negative_answers() -> None:
    seen: list[str] = []
    lock = threading.Lock()

    def review(token: str) -> UserInfo | None:
        with lock:
            seen.append(token)
        return ALICE if token == GOOD else None

    auth = TokenReviewAuthenticator(review, cache_seconds=60)
    users = await asyncio.gather(*(auth.authenticate(GOOD) for _ in range(10)))
    assert users == [ALICE] * 10
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            await auth.authenticate(BAD)
    assert seen == [GOOD, BAD]
    assert auth.reviews == 2 and len(auth.cache) == 1 and len(auth.refused) == 1
    # Tokens are cached as digests only.
    for cache in (auth.cache, auth.refused):
        assert all(isinstance(k, bytes) and len(k) == 32 for k in cache._entries)


async def test_token_review_failure_is_a_retryable_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def review(token: str) -> UserInfo | None:
        raise ConnectionError(f"cannot reach {token}")

    auth = TokenReviewAuthenticator(review, cache_seconds=60)
    secret = jwt("the-secret-token")
    with pytest.raises(ReviewUnavailable) as raised:
        await auth.authenticate(secret)
    assert raised.value.status == 500 and raised.value.retryable
    assert secret not in caplog.text and b"the-secret-token".hex() not in caplog.text
    assert len(auth.cache) == len(auth.refused) == 0  # failures are not cached


async def test_access_review_authorizer_caches_for_the_ttl() -> None:
    answers = {("encrypt", "a", "k1"): True}
    asked: list[tuple[str, str, str | None]] = []

    def review(
        user: UserInfo, verb: str, namespace: str, name: str | None, resource: str
    ) -> AccessDecision:
        asked.append((verb, namespace, name))
        return AccessDecision(answers.get((verb, namespace, name or ""), False), "rbac")

    clock = FakeTime()
    authz = SubjectAccessReviewAuthorizer(review, cache_seconds=10, clock=clock)
    await authz.authorize(ALICE, "encrypt", "a", "k1")
    await authz.authorize(ALICE, "encrypt", "a", "k1")
    with pytest.raises(AccessDenied) as denied:
        await authz.authorize(ALICE, "decrypt", "a", "k1")
    assert "decrypt" in denied.value.message and ALICE.username in denied.value.message
    assert asked == [("encrypt", "a", "k1"), ("decrypt", "a", "k1")]
    # A removed RoleBinding stops working once the cached answer expires.
    answers.clear()
    clock.now += 9.9
    await authz.authorize(ALICE, "encrypt", "a", "k1")
    clock.now += 0.1
    with pytest.raises(AccessDenied):
        await authz.authorize(ALICE, "encrypt", "a", "k1")
    assert asked[-1] == ("encrypt", "a", "k1") and len(asked) == 3


async def test_access_answers_are_kept_per_resource() -> None:
    """A grant on customermasterkeys says nothing about keymaterialimports of the same name."""
    asked: list[tuple[str, str]] = []

    def review(
        user: UserInfo, verb: str, namespace: str, name: str | None, resource: str
    ) -> AccessDecision:
        asked.append((verb, resource))
        return AccessDecision(resource == "customermasterkeys", "rbac")

    authz = SubjectAccessReviewAuthorizer(review, cache_seconds=10)
    await authz.authorize(ALICE, "delete", "a", "k1")
    with pytest.raises(AccessDenied) as denied:
        await authz.authorize(ALICE, "delete", "a", "k1", "keymaterialimports")
    assert "keymaterialimports.kms.cmk.dev 'k1'" in denied.value.message
    await authz.authorize(ALICE, "delete", "a", "k1")  # cached, not asked again
    assert asked == [("delete", "customermasterkeys"), ("delete", "keymaterialimports")]


def test_static_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# comment\n\nt1,alice,devs|ops\nt2,bob\n")
    static = StaticTokens.from_file(path)
    alice = asyncio.run(static.authenticate("t1"))
    assert alice.username == "alice" and alice.groups == ("devs", "ops")
    assert asyncio.run(static.authenticate("t2")).groups == ()
    with pytest.raises(Unauthenticated):
        asyncio.run(static.authenticate("t3"))
    asyncio.run(static.authorize(alice, "decrypt", "any", "thing"))  # allowed: dev only
    path.write_text("only-a-token\n")
    with pytest.raises(ValueError, match=":1:"):
        StaticTokens.from_file(path)


# -- kube.reviews with a fake client -----------------------------------------------------


class _Api:
    def __init__(self, answer: Any, sent: list[Any]) -> None:
        self._answer, self._sent = answer, sent
        self.options: list[dict[str, Any]] = []

    def create_token_review(self, body: Any, **options: Any) -> Any:
        self._sent.append(body)
        self.options.append(options)
        return self._answer

    def create_subject_access_review(self, body: Any, **options: Any) -> Any:
        self._sent.append(body)
        self.options.append(options)
        return self._answer


def _token_review_answer(audiences: list[str] | None) -> Any:
    return client.V1TokenReview(
        spec=client.V1TokenReviewSpec(token="x"),
        status=client.V1TokenReviewStatus(
            authenticated=True,
            audiences=audiences,
            user=client.V1UserInfo(
                username="system:serviceaccount:a:app",
                uid="uid-1",
                groups=["system:serviceaccounts"],
                extra={"authentication.kubernetes.io/pod-name": ["p-1"]},
            ),
        ),
    )


def test_review_token_sends_audiences_and_reads_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Any] = []
    answer = _token_review_answer(["kms"])
    api = _Api(answer, sent)
    monkeypatch.setattr(reviews.client, "AuthenticationV1Api", lambda _: api)
    user = reviews.review_token(object(), "tok", ["kms"])  # type: ignore[arg-type]
    assert user == ALICE
    assert sent[0].spec.token == "tok" and sent[0].spec.audiences == ["kms"]
    assert api.options[0]["_request_timeout"] == reviews.REQUEST_TIMEOUT
    answer.status = client.V1TokenReviewStatus(authenticated=False, error="expired")
    assert reviews.review_token(object(), "tok", ["kms"]) is None  # type: ignore[arg-type]
    # Without an audience the API server would accept its own tokens: never sent like that.
    with pytest.raises(ValueError, match="audiences"):
        reviews.review_token(object(), "tok", [])  # type: ignore[arg-type]
    assert len(sent) == 2


@pytest.mark.parametrize(
    ("reviewed", "accepted"),
    [
        (["kms.cmk.dev"], True),
        (["other", "kms.cmk.dev"], True),
        # The answer of an authenticator that is not audience-aware: the API server's audience.
        (None, False),
        ([], False),
        (["https://kubernetes.default.svc.cluster.local"], False),
    ],
)
def test_review_token_compares_the_reviewed_audiences_with_ours(
    monkeypatch: pytest.MonkeyPatch, reviewed: list[str] | None, accepted: bool
) -> None:
    sent: list[Any] = []
    api = _Api(_token_review_answer(reviewed), sent)
    monkeypatch.setattr(reviews.client, "AuthenticationV1Api", lambda _: api)
    user = reviews.review_token(object(), "tok", ["kms.cmk.dev"])  # type: ignore[arg-type]
    assert (user == ALICE) is accepted
    assert sent[0].spec.audiences == ["kms.cmk.dev"]


def test_request_token_asks_for_the_audience_and_explains_refusals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[Any, ...]] = []

    class Core:
        def create_namespaced_service_account_token(
            self, name: str, namespace: str, body: Any, **options: Any
        ) -> Any:
            calls.append((name, namespace, body, options))
            if name == "nobody":
                raise client.ApiException(status=403, reason="Forbidden")
            return client.AuthenticationV1TokenRequest(
                spec=body.spec, status=client.V1TokenRequestStatus(
                    token="minted", expiration_timestamp="2030-01-01T00:00:00Z"),
            )  # fmt: skip

    monkeypatch.setattr(reviews.client, "CoreV1Api", lambda _: Core())
    token = reviews.request_token(object(), "ns", "app", audiences=["kms.cmk.dev"])  # type: ignore[arg-type]
    assert token == "minted"
    name, namespace, body, options = calls[0]
    assert (name, namespace, body.spec.audiences) == ("app", "ns", ["kms.cmk.dev"])
    assert body.spec.expiration_seconds == 600 and options["_request_timeout"]
    with pytest.raises(reviews.TokenRequestError, match="ns/nobody refused: 403 Forbidden"):
        reviews.request_token(object(), "ns", "nobody", audiences=["kms.cmk.dev"])  # type: ignore[arg-type]


# -- what an unauthenticated flood cannot do ----------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "a.b",
        "a.b.c.d",
        "a..c",
        "a.b.c=",
        "a.b.c\n",
        "ä.b.c",
        "a b.c.d",
        "a." + "b" * MAX_TOKEN_CHARS + ".c",
    ],
)
async def test_tokens_not_shaped_like_a_service_account_token_get_no_review(token: str) -> None:
    asked: list[str] = []

    def review(token: str) -> UserInfo | None:
        asked.append(token)
        return ALICE

    auth = TokenReviewAuthenticator(review, cache_seconds=60)
    assert not looks_like_service_account_token(token)
    with pytest.raises(Unauthenticated):
        await auth.authenticate(token)
    assert asked == [] and auth.reviews == 0
    assert len(auth.refused) == 0  # nothing to remember: the check is cheaper than a lookup


def test_real_token_shapes_pass_the_check() -> None:
    assert looks_like_service_account_token(GOOD)
    assert looks_like_service_account_token("x" * 1000 + ".y.z")


async def test_reviews_run_on_their_own_threads_not_the_default_executor() -> None:
    threads: list[str] = []

    def review_token(token: str) -> UserInfo | None:
        threads.append(threading.current_thread().name)
        return ALICE

    def review_access(
        user: UserInfo, verb: str, ns: str, name: str | None, resource: str
    ) -> AccessDecision:
        threads.append(threading.current_thread().name)
        return AccessDecision(True)

    auth = TokenReviewAuthenticator(review_token, cache_seconds=60)
    authz = SubjectAccessReviewAuthorizer(review_access, cache_seconds=60)
    try:
        await authz.authorize(await auth.authenticate(GOOD), "encrypt", "a", "k1")
    finally:
        auth.pool.close()
        authz.pool.close()
    assert threads[0].startswith("kms-token-review") and threads[1].startswith("kms-access-review")


async def test_ten_thousand_bad_tokens_do_not_evict_a_good_answer() -> None:
    asked: list[str] = []

    def review(token: str) -> UserInfo | None:
        asked.append(token)
        return ALICE if token == GOOD else None

    auth = TokenReviewAuthenticator(review, cache_seconds=3600)
    try:
        assert await auth.authenticate(GOOD) == ALICE
        for number in range(10_000):
            with pytest.raises(Unauthenticated):
                await auth.authenticate(jwt(f"bad-{number}"))
        assert await auth.authenticate(GOOD) == ALICE
    finally:
        auth.pool.close()
    assert asked.count(GOOD) == 1 and len(asked) == 10_001
    assert len(auth.cache) == 1 and len(auth.refused) == auth.refused.max_entries < 10_000


async def test_denied_answers_do_not_evict_allowed_ones() -> None:
    asked: list[str | None] = []

    def review(
        user: UserInfo, verb: str, ns: str, name: str | None, resource: str
    ) -> AccessDecision:
        asked.append(name)
        return AccessDecision(name == "mine")

    authz = SubjectAccessReviewAuthorizer(review, cache_seconds=3600)
    try:
        await authz.authorize(ALICE, "encrypt", "a", "mine")
        for number in range(3_000):
            with pytest.raises(AccessDenied):
                await authz.authorize(ALICE, "encrypt", "a", f"other-{number}")
        await authz.authorize(ALICE, "encrypt", "a", "mine")
    finally:
        authz.pool.close()
    assert asked.count("mine") == 1 and authz.reviews == 3_001
    assert len(authz.cache) == 1 and len(authz.denied) == authz.denied.max_entries


async def test_a_flood_of_new_tokens_is_bounded_and_never_delays_a_cached_good_token() -> None:
    release = threading.Event()
    reviewed: list[str] = []

    def review(token: str) -> UserInfo | None:
        if token == GOOD:
            return ALICE
        reviewed.append(token)
        release.wait(timeout=60)  # an API server that answers slowly
        return None

    pool = ReviewPool("token-review", threads=2, in_flight=4, queue_seconds=0)
    auth = TokenReviewAuthenticator(review, cache_seconds=60, pool=pool)
    try:
        assert await auth.authenticate(GOOD) == ALICE
        flood = [asyncio.create_task(auth.authenticate(jwt(f"bad-{n}"))) for n in range(300)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert pool.busy == 4  # two reviews running, two queued for a thread; no more
        # The cached caller is answered while every slot is taken (a generous deadline only).
        assert await asyncio.wait_for(auth.authenticate(GOOD), timeout=5) == ALICE
        release.set()
        outcomes = await asyncio.gather(*flood, return_exceptions=True)
    finally:
        release.set()
        pool.close()
    busy = [o for o in outcomes if isinstance(o, ReviewsBusy)]
    refused = [o for o in outcomes if isinstance(o, Unauthenticated)]
    assert len(busy) == 296 and len(refused) == 4 and len(reviewed) == 4
    assert busy[0].status == 503 and busy[0].code == "ServiceUnavailable" and busy[0].retryable
    assert pool.busy == 0


async def test_a_review_pool_gives_a_slot_back_only_when_its_thread_is_done() -> None:
    started, release = threading.Event(), threading.Event()

    def slow() -> int:
        started.set()
        release.wait(timeout=60)
        return 1

    pool = ReviewPool("p", threads=1, in_flight=1, queue_seconds=0)
    try:
        caller = asyncio.create_task(pool.run(slow))
        await asyncio.to_thread(started.wait, 10)
        caller.cancel()  # the caller gives up; the thread still runs
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert pool.busy == 1
        with pytest.raises(ReviewsBusy):
            await pool.run(slow)
        release.set()
        for _ in range(500):
            if pool.busy == 0:
                break
            await asyncio.sleep(0.01)
        assert pool.busy == 0
        assert await pool.run(lambda: 2) == 2
    finally:
        release.set()
        pool.close()


def test_review_access_sends_the_user_and_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Any] = []
    answer = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(),
        status=client.V1SubjectAccessReviewStatus(allowed=True, reason="RBAC: allowed"),
    )
    monkeypatch.setattr(reviews.client, "AuthorizationV1Api", lambda api: _Api(answer, sent))
    decision = reviews.review_access(
        object(),  # type: ignore[arg-type]
        ALICE,
        verb="decrypt",
        group="kms.cmk.dev",
        resource="customermasterkeys",
        namespace="a",
        name="k1",
    )
    assert decision.allowed
    spec = sent[0].spec
    assert spec.user == ALICE.username and spec.uid == "uid-1"
    assert spec.groups == ["system:serviceaccounts"]
    assert spec.extra == {"authentication.kubernetes.io/pod-name": ["p-1"]}
    attrs = spec.resource_attributes
    assert (attrs.group, attrs.resource, attrs.verb, attrs.namespace, attrs.name) == (
        "kms.cmk.dev", "customermasterkeys", "decrypt", "a", "k1",
    )  # fmt: skip
    answer.status = client.V1SubjectAccessReviewStatus(allowed=False, denied=True)
    assert not reviews.review_access(
        object(),  # type: ignore[arg-type]
        ALICE, verb="encrypt", group="g", resource="r", namespace="a", name=None,
    ).allowed  # fmt: skip

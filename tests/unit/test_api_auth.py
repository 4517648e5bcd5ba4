"""Authentication and authorization of the API: bearer parsing, the TTL cache (single flight,
expiry), TokenReview / SubjectAccessReview adapters with doubles, static tokens, and the
request bodies sent to the Kubernetes API (``kube.reviews``) with a fake client."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kms_operator.api.auth import (
    ReviewUnavailable,
    StaticTokens,
    SubjectAccessReviewAuthorizer,
    TokenReviewAuthenticator,
    bearer_token,
)
from kms_operator.api.caching import TtlCache
from kms_operator.errors import AccessDenied, Unauthenticated
from kms_operator.kube import reviews
from kms_operator.kube.reviews import AccessDecision, UserInfo

pytestmark = pytest.mark.unit

ALICE = UserInfo.of("system:serviceaccount:a:app", "uid-1", ["system:serviceaccounts"],
                    {"authentication.kubernetes.io/pod-name": ["p-1"]})  # fmt: skip


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
        return ALICE if token == "good" else None

    auth = TokenReviewAuthenticator(review, cache_seconds=60)
    users = await asyncio.gather(*(auth.authenticate("good") for _ in range(10)))
    assert users == [ALICE] * 10
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            await auth.authenticate("bad")
    assert seen == ["good", "bad"]
    # Tokens are cached as digests only.
    assert all(isinstance(k, bytes) and len(k) == 32 for k in auth.cache._entries)


async def test_token_review_failure_is_a_retryable_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def review(token: str) -> UserInfo | None:
        raise ConnectionError(f"cannot reach {token}")

    auth = TokenReviewAuthenticator(review, cache_seconds=60)
    with pytest.raises(ReviewUnavailable) as raised:
        await auth.authenticate("the-secret-token")
    assert raised.value.status == 500 and raised.value.retryable
    assert "the-secret-token" not in caplog.text


async def test_access_review_authorizer_caches_for_the_ttl() -> None:
    answers = {("encrypt", "a", "k1"): True}
    asked: list[tuple[str, str, str | None]] = []

    def review(user: UserInfo, verb: str, namespace: str, name: str | None) -> AccessDecision:
        asked.append((verb, namespace, name))
        return AccessDecision(answers.get((verb, namespace, name or ""), False), "rbac")

    authz = SubjectAccessReviewAuthorizer(review, cache_seconds=0.2)
    await authz.authorize(ALICE, "encrypt", "a", "k1")
    await authz.authorize(ALICE, "encrypt", "a", "k1")
    with pytest.raises(AccessDenied) as denied:
        await authz.authorize(ALICE, "decrypt", "a", "k1")
    assert "decrypt" in denied.value.message and ALICE.username in denied.value.message
    assert asked == [("encrypt", "a", "k1"), ("decrypt", "a", "k1")]
    # A removed RoleBinding stops working once the cached answer expires.
    answers.clear()
    await authz.authorize(ALICE, "encrypt", "a", "k1")
    await asyncio.sleep(0.25)
    with pytest.raises(AccessDenied):
        await authz.authorize(ALICE, "encrypt", "a", "k1")


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

    def create_token_review(self, body: Any) -> Any:
        self._sent.append(body)
        return self._answer

    def create_subject_access_review(self, body: Any) -> Any:
        self._sent.append(body)
        return self._answer


def test_review_token_sends_audiences_and_reads_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Any] = []
    answer = client.V1TokenReview(
        spec=client.V1TokenReviewSpec(token="x"),
        status=client.V1TokenReviewStatus(
            authenticated=True,
            user=client.V1UserInfo(
                username="system:serviceaccount:a:app",
                uid="uid-1",
                groups=["system:serviceaccounts"],
                extra={"authentication.kubernetes.io/pod-name": ["p-1"]},
            ),
        ),
    )
    monkeypatch.setattr(reviews.client, "AuthenticationV1Api", lambda api: _Api(answer, sent))
    user = reviews.review_token(object(), "tok", ["kms"])  # type: ignore[arg-type]
    assert user == ALICE
    assert sent[0].spec.token == "tok" and sent[0].spec.audiences == ["kms"]
    answer.status = client.V1TokenReviewStatus(authenticated=False, error="expired")
    assert reviews.review_token(object(), "tok") is None  # type: ignore[arg-type]
    assert sent[1].spec.audiences is None


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

"""The data-plane API in-process for unit tests: a real KeyService, aiohttp's test client, the
static-token authenticator and an authorizer double (the seam of ``create_app``).

:func:`serve` starts the app with two keys (``payments`` in :data:`NS` with two aliases,
``archive`` in :data:`OTHER_NS`) and no grant; tests grant what they need.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from kms_operator import api as native_api
from kms_operator.contract import CMK_PLURAL
from kms_operator.errors import AccessDenied
from kms_operator.keys.service import KeyService
from kms_operator.kube.reviews import UserInfo
from kms_operator.serving.app import create_app
from kms_operator.serving.audit import AuditRecord
from kms_operator.serving.auth import StaticTokens
from kms_operator.store.records import KeyRecord

NS, OTHER_NS = "team-a", "team-b"
ALICE, BOB = "alice-token-0123456789", "bob-token-9876543210"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


@dataclass
class Grants:
    """Authorizer double: ``(user, verb, namespace, name)`` tuples of CMK verbs (``verb`` is
    ``resource:verb`` for other resources); name ``*`` means any."""

    allowed: set[tuple[str, str, str, str]] = field(default_factory=set)
    asked: list[tuple[str, str, str, str | None]] = field(default_factory=list)

    def allow(self, user: str, verbs: str, namespace: str, name: str = "*") -> None:
        for verb in verbs.split(","):
            self.allowed.add((user, verb, namespace, name))

    async def authorize(
        self,
        user: UserInfo,
        verb: str,
        namespace: str,
        name: str | None,
        resource: str = CMK_PLURAL,
    ) -> None:
        if resource != CMK_PLURAL:
            verb = f"{resource}:{verb}"
        self.asked.append((user.username, verb, namespace, name))
        if (user.username, verb, namespace, "*") in self.allowed:
            return
        if name is not None and (user.username, verb, namespace, name) in self.allowed:
            return
        raise AccessDenied(f"user {user.username!r} may not {verb} {name!r} in {namespace!r}")


@dataclass
class MemorySink:
    lines: list[str] = field(default_factory=list)
    fail: bool = False

    def write(self, record: AuditRecord) -> None:
        if self.fail:
            raise OSError("disk full")
        self.lines.append(record.to_json())

    def close(self) -> None:
        pass

    @property
    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


@dataclass
class Api:
    client: TestClient  # type: ignore[type-arg]
    service: KeyService
    grants: Grants
    audit: MemorySink
    key: KeyRecord
    other: KeyRecord

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = ALICE,
        raw: bytes | None = None,
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        async with self.client.request(method, path, data=data, headers=headers) as response:
            return response.status, await response.json()

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, dict[str, Any]]:
        return await self.call("POST", path, body, **kw)

    async def encrypt(self, plaintext: bytes, context: dict[str, str] | None = None) -> str:
        body: dict[str, Any] = {"plaintext": b64(plaintext)}
        if context is not None:
            body["encryptionContext"] = context
        status, answer = await self.post(f"/v1/namespaces/{NS}/keys/payments/encrypt", body)
        assert status == 200, answer
        return str(answer["ciphertextBlob"])


def error(answer: dict[str, Any]) -> tuple[str, str]:
    assert set(answer) == {"error"}, answer
    assert set(answer["error"]) == {"code", "message"}, answer
    return answer["error"]["code"], answer["error"]["message"]


@asynccontextmanager
async def serve(service: KeyService, tmp_path: Path) -> AsyncIterator[Api]:
    tokens = tmp_path / "tokens.csv"
    tokens.write_text(f"# local users\n{ALICE},alice,devs|ops\n\n{BOB},bob\n")
    grants, sink = Grants(), MemorySink()
    app = create_app(
        service,
        front_ends=(native_api.add_routes,),
        authenticator=StaticTokens.from_file(tokens),
        authorizer=grants,
        audit=sink,
    )
    key = service.create_key(NS, "payments", aliases=("alias/payments", "alias/team/orders"))
    other = service.create_key(OTHER_NS, "archive")
    async with TestClient(TestServer(app)) as client:
        yield Api(client, service, grants, sink, key, other)

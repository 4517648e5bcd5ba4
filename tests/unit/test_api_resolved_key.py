"""Issue 8, item 9: the API encrypts under the key it authorized, even if an alias moves while
the authorization is awaited (the review saw a 200 with the other key's id)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from tests.support.changes import set_aliases

from kms_operator import api as native_api
from kms_operator.keys.service import KeyService
from kms_operator.kube.reviews import UserInfo
from kms_operator.serving.app import create_app
from kms_operator.serving.audit import AuditRecord
from kms_operator.serving.auth import StaticTokens

pytestmark = pytest.mark.unit

NS = "team-a"
TOKEN = "alice-token-0123456789"


class Sink:
    def __init__(self) -> None:
        self.records: list[dict[str, object]] = []

    def write(self, record: AuditRecord) -> None:
        self.records.append(json.loads(record.to_json()))

    def close(self) -> None:
        pass


class AliasMovingAuthorizer:
    """Allows ``first`` only; while the check is awaited, moves ``alias/a`` to ``second``."""

    def __init__(self, service: KeyService) -> None:
        self.service = service

    async def authorize(
        self, user: UserInfo, verb: str, namespace: str, name: str | None, resource: str = ""
    ) -> None:
        first = self.service.resolve(NS, "first")
        if first.aliases:
            set_aliases(self.service, first.key_id, ())
            set_aliases(self.service, self.service.resolve(NS, "second").key_id, ("alias/a",))
        assert name == "first"


@pytest.mark.parametrize("route", ["encrypt", "generate-data-key"])
async def test_alias_moved_during_authorization(
    service: KeyService, tmp_path: Path, route: str
) -> None:
    first = service.create_key(NS, "first", aliases=("alias/a",))
    service.create_key(NS, "second")
    tokens = tmp_path / "tokens.csv"
    tokens.write_text(f"{TOKEN},alice\n")
    sink = Sink()
    app = create_app(
        service,
        front_ends=(native_api.add_routes,),
        authenticator=StaticTokens.from_file(tokens),
        authorizer=AliasMovingAuthorizer(service),
        audit=sink,
    )
    body = {"plaintext": base64.b64encode(b"x").decode()} if route == "encrypt" else {}
    async with TestClient(TestServer(app)) as client:
        response = await client.post(
            f"/v1/namespaces/{NS}/aliases/a/{route}",
            json=body,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        answer = await response.json()
    assert response.status == 200, answer
    assert answer["keyId"] == str(first.key_id)
    assert sink.records[-1]["keyId"] == str(first.key_id)

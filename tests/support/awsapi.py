"""The AWS protocol in-process for unit tests: the listener's app with both front ends on a real
local port (aiohttp's test server), a real KeyService, static tokens whose users are
ServiceAccounts, the authorizer double of :mod:`tests.support.api`, and boto3 clients; with
``resources`` (the custom resources, e.g. :class:`tests.support.awsresources.FakeResources`)
the lifecycle operations too.

boto3 is synchronous: tests call it through :meth:`AwsApi.kms` in a thread
(``await api.run(client.encrypt, ...)``), so the server keeps serving on the test's loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
from aiohttp.test_utils import TestServer
from botocore.config import Config
from tests.support.api import Grants, MemorySink

from kms_operator import api as native_api
from kms_operator.awskms import routes as awskms
from kms_operator.awskms.identifiers import Arns
from kms_operator.awskms.resources import Patience, Resources
from kms_operator.keys.service import KeyService
from kms_operator.serving.app import create_app
from kms_operator.serving.auth import StaticTokens
from kms_operator.store.records import KeyRecord

NS, OTHER_NS = "team-a", "team-b"
ALICE_TOKEN, BOB_TOKEN = "alice-token-0123456789", "bob-token-9876543210"
#: A user who is not a ServiceAccount (a person, or the static users of local development).
DEV_TOKEN, DEV = "dev-token-5555555555", "dev"
ALICE, BOB = "system:serviceaccount:team-a:alice", "system:serviceaccount:team-b:bob"
ACCOUNT = "123456789012"
T = TypeVar("T")


@dataclass
class AwsApi:
    url: str
    service: KeyService
    grants: Grants
    audit: MemorySink
    key: KeyRecord
    other: KeyRecord
    arns: Arns

    def kms(self, token: str | None = ALICE_TOKEN, region: str = "us-east-1") -> Any:
        """A boto3 KMS client of this server; the token is the session token (or none)."""
        return boto3.client(
            "kms",
            endpoint_url=self.url,
            region_name=region,
            aws_access_key_id="not-a-credential",
            aws_secret_access_key="not-a-credential",
            aws_session_token=token,
            config=Config(retries={"max_attempts": 1}),
        )

    async def run(self, function: Callable[..., T], /, **kwargs: Any) -> T:
        return await asyncio.to_thread(functools.partial(function, **kwargs))


@asynccontextmanager
async def serve(
    service: KeyService,
    tmp_path: Path,
    resources: Resources | None = None,
    patience: Patience = awskms.PATIENCE,
) -> AsyncIterator[AwsApi]:
    tokens = tmp_path / "tokens.csv"
    tokens.write_text(f"{ALICE_TOKEN},{ALICE},devs\n{BOB_TOKEN},{BOB}\n{DEV_TOKEN},{DEV}\n")
    grants, sink = Grants(), MemorySink()
    arns = Arns(ACCOUNT)
    app = create_app(
        service,
        front_ends=(awskms.front_end(arns, resources, patience=patience), native_api.add_routes),
        authenticator=StaticTokens.from_file(tokens),
        authorizer=grants,
        audit=sink,
    )
    key = service.create_key(NS, "payments", aliases=("alias/payments", "alias/team/orders"))
    other = service.create_key(OTHER_NS, "archive")
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield AwsApi(str(server.make_url("")).rstrip("/"), service, grants, sink, key, other, arns)
    finally:
        await server.close()

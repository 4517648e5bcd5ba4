"""Schemathesis against the API's own ``/openapi.json``: valid and invalid requests generated
from the document, sent over HTTP to the app in-process (a real KeyService on SQLite, the
static-token authenticator, an authorizer that allows everything so that calls go deep).

No input may yield a 5xx; every answer must be one the document describes (its status, its
body). The server runs in a thread of its own, with its own event loop, because schemathesis
calls synchronously.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from aiohttp import web
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from kms_operator import api as native_api
from kms_operator.api import openapi
from kms_operator.keys.service import KeyService
from kms_operator.kube.reviews import UserInfo
from kms_operator.serving.app import create_app
from kms_operator.serving.auth import StaticTokens
from kms_operator.serving.calls import STATE
from kms_operator.store.rootkey import load_root_key_file
from kms_operator.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.unit

TOKEN = "fuzz-token-0123456789"
NS = "team-a"

SCHEMA = schemathesis.openapi.from_dict(openapi.document())
SCHEMA.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=30,
    deterministic=True,
)
# The coverage phase works out its cases while pytest collects: minutes here, for little more.
SCHEMA.config.phases.update(phases=["examples", "fuzzing"])
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


class AllowAll:
    """Every caller may do everything: the calls get past authorization to the service."""

    async def authorize(
        self, user: UserInfo, verb: str, namespace: str, name: str | None, resource: str = ""
    ) -> None:
        return None


class _NoAudit:
    def write(self, record: object) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz")
    store = SqliteKeyStore(root / "kms.db", load_root_key_file(root / "root.key"))
    service = KeyService(store)
    service.create_key(NS, "payments", aliases=("alias/payments",))
    tokens = root / "tokens.csv"
    tokens.write_text(f"{TOKEN},fuzzer\n")
    app = create_app(
        service,
        front_ends=(native_api.add_routes,),
        authenticator=StaticTokens.from_file(tokens),
        authorizer=AllowAll(),
        audit=_NoAudit(),
    )
    app[STATE].ready = True  # /readyz's 503 before that is by design
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
        store.close()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as opened:
        yield opened


@SCHEMA.parametrize()
def test_generated_requests_get_documented_answers_and_no_server_error(
    case: schemathesis.Case, base_url: str, session: requests.Session
) -> None:
    case.call_and_validate(
        base_url=base_url,
        session=session,
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=CHECKS,
    )

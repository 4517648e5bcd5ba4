"""Encrypt through the AWS KMS protocol: this KMS against moto's server and local-kms.

All three speak AWS JSON 1.1 and get the same request (``TrentService.Encrypt`` of the same
256-byte plaintext under a key made for the run, the same headers) from the same load
generator, one server after the other, in this run. This KMS runs as in production: the
listener's application with both front ends, the caller's token checked (TokenReview double
behind the real cache), the verb authorized (SubjectAccessReview double behind the real cache),
a fail-closed audit line written to a file per call, metrics; once over TLS (as it serves in a
cluster) and once over plain HTTP, as the two reference servers serve. moto (``moto_server``,
the dev extra) and local-kms (built by ``hack/tools/ensure.sh``) check no credentials at all.

    .venv/bin/python bench/bench_aws.py [--duration 10] [--connections 32] [--rounds 2]

Load: ``wrk`` when installed (``apt-get install wrk``), else a Python aiohttp generator in a
separate process. Goals: at least 10x moto's requests/s, and at least local-kms's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
from aiohttp import web

# The reference servers are started by the tests' helpers (one harness for tests and bench).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import awstools

from bench_api import run_wrk_script
from kms_operator import api as native_api
from kms_operator.awskms import routes as awskms
from kms_operator.awskms.identifiers import Arns
from kms_operator.keys.service import KeyService
from kms_operator.kube.reviews import AccessDecision, UserInfo
from kms_operator.serving import tls
from kms_operator.serving.app import create_app
from kms_operator.serving.audit import FileAuditSink
from kms_operator.serving.auth import (
    SubjectAccessReviewAuthorizer,
    TokenReviewAuthenticator,
)
from kms_operator.settings import Settings
from kms_operator.store.rootkey import load_root_key_file
from kms_operator.store.sqlite import SqliteKeyStore

#: Shaped like a ServiceAccount token (a JWT), as the authenticator requires before a review.
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.YmVuY2gtc2lnbmF0dXJl"
NAMESPACE = "bench"
PLAINTEXT = os.urandom(256)
#: What an SDK sends besides the body; the signature is never checked by any of the three.
HEADERS = {
    "Content-Type": "application/x-amz-json-1.1",
    "X-Amz-Target": "TrentService.Encrypt",
    "X-Amz-Security-Token": TOKEN,
    "X-Amz-Date": "20261202T000000Z",
    "Authorization": (
        "AWS4-HMAC-SHA256 Credential=AKIDBENCH/20261202/us-east-1/kms/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=" + "0" * 64
    ),
}


#: local-kms is Go and uses every core; this KMS serves from one event loop (one core). The
#: row with one core compares them core for core.
LOCAL_KMS_ONE_CORE = "local-kms (GOMAXPROCS=1)"


@dataclass
class Result:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def body_for(key_id: str) -> str:
    return json.dumps({"KeyId": key_id, "Plaintext": base64.b64encode(PLAINTEXT).decode()})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- load --------------------------------------------------------------------------------------

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[{body}]]
{headers}
"""


async def run_load(url: str, body: str, args: argparse.Namespace, work: Path) -> Result:
    if shutil.which("wrk") and not args.python_load:
        headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in HEADERS.items())
        script = work / "encrypt.lua"
        script.write_text(_WRK_SCRIPT.format(body=body, headers=headers))
        rps, p50, p99, errors = await run_wrk_script(url, script, args.connections, args.duration)
        return Result(rps, p50, p99, errors)
    request = work / "request.json"
    request.write_text(json.dumps({"headers": HEADERS, "body": body}))
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--load", url, "--request", str(request),
        "--connections", str(args.connections), "--duration", str(args.duration),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output = json.loads((await process.communicate())[0])
    return Result(output["rps"], output["p50"], output["p99"], output["errors"])


async def python_load(
    url: str, request: Path, connections: int, duration: float
) -> dict[str, float]:
    import time

    import aiohttp

    sent = json.loads(request.read_text())
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=connections, ssl=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while (start := time.perf_counter()) < deadline:
                async with session.post(url, data=sent["body"], headers=sent["headers"]) as answer:
                    await answer.read()
                    errors += answer.status != 200
                latencies.append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50": latencies[len(latencies) // 2] * 1000,
        "p99": latencies[int(len(latencies) * 0.99)] * 1000,
        "errors": errors,
    }


# -- the servers -------------------------------------------------------------------------------


class ThisKms:
    """The listener's application in this process, over one store for the whole run."""

    def __init__(self, work: Path) -> None:
        self.store = SqliteKeyStore(work / "store.db", load_root_key_file(work / "root.key"))
        self.service = KeyService(self.store)
        self.key = self.service.create_key(NAMESPACE, "bench-key")
        self.service.warm_cache()
        self.serving = tls.load_or_generate(Settings(tls_dir=work / "tls"))
        user = UserInfo.of(f"system:serviceaccount:{NAMESPACE}:client", "uid")

        def review_token(token: str) -> UserInfo | None:
            return user if token == TOKEN else None

        def review_access(
            who: UserInfo, verb: str, namespace: str, name: str | None, resource: str
        ) -> AccessDecision:
            return AccessDecision(True, "bench")

        self.authenticator = TokenReviewAuthenticator(review_token, cache_seconds=3600)
        self.authorizer = SubjectAccessReviewAuthorizer(review_access, cache_seconds=3600)
        self.audit = FileAuditSink(work / "audit.log")
        self.audit_file = work / "audit.log"

    @contextlib.asynccontextmanager
    async def serving_at(self, secure: bool) -> AsyncIterator[str]:
        app = create_app(
            self.service,
            front_ends=(awskms.front_end(Arns()), native_api.add_routes),
            authenticator=self.authenticator,
            authorizer=self.authorizer,
            audit=self.audit,
        )
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        port = free_port()
        context = self.serving.context if secure else None
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context, backlog=512).start()
        try:
            yield f"{'https' if secure else 'http'}://127.0.0.1:{port}/"
        finally:
            await runner.cleanup()

    def close(self) -> None:
        self.audit.close()
        self.authenticator.pool.close()
        self.authorizer.pool.close()
        self.store.close()
        self.serving.cleanup()


def reference_key(url: str) -> str:
    kms = boto3.client(
        "kms",
        endpoint_url=url,
        region_name=awstools.REGION,
        aws_access_key_id="AKIDBENCH",
        aws_secret_access_key="bench",
    )
    return str(kms.create_key()["KeyMetadata"]["KeyId"])


@contextlib.contextmanager
def reference(name: str) -> Iterator[tuple[str, str]]:
    port = free_port()
    if name == "moto server":
        server = awstools.moto_server(port)
    elif name == LOCAL_KMS_ONE_CORE:
        server = awstools.local_kms_server(port, GOMAXPROCS="1")
    else:
        server = awstools.local_kms_server(port)
    with server as url:
        yield url.rstrip("/") + "/", reference_key(url)


# -- the run -----------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="kms-bench-aws-"))
    ours = ThisKms(work)
    names = [
        "kms-operator (TLS)",
        "kms-operator (HTTP)",
        "local-kms",
        LOCAL_KMS_ONE_CORE,
        "moto server",
    ]
    results: dict[str, list[Result]] = {name: [] for name in names}
    generator = "wrk -t1" if shutil.which("wrk") and not args.python_load else "python aiohttp"
    print(
        f"TrentService.Encrypt of {len(PLAINTEXT)} bytes, {args.connections} connections, "
        f"{args.duration:g} s x {args.rounds} rounds each, load: {generator}"
    )
    try:
        for round_number in range(1, args.rounds + 1):
            for name in names:
                if name.startswith("kms-operator"):
                    async with ours.serving_at(secure="TLS" in name) as url:
                        result = await run_load(url, body_for(str(ours.key.key_id)), args, work)
                else:
                    with reference(name) as (url, key):
                        result = await run_load(url, body_for(key), args, work)
                results[name].append(result)
                print(
                    f"  round {round_number} {name:24} {result.requests_per_second:8.0f} req/s"
                    f"  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
                    f"  errors {result.errors}"
                )
    finally:
        ours.close()
    lines = sum(1 for _ in ours.audit_file.open())
    shutil.rmtree(work, ignore_errors=True)
    mean = {name: _mean(rows) for name, rows in results.items()}
    moto, local = mean["moto server"], mean["local-kms"]
    print()
    print(
        f"| {'server':24} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'x moto':>6} "
        f"| {'x local-kms':>11} |"
    )
    print(f"|{'-' * 26}|{'-' * 10}|{'-' * 9}|{'-' * 9}|{'-' * 8}|{'-' * 13}|")
    for name, row in mean.items():
        print(
            f"| {name:24} | {row.requests_per_second:8.0f} | {row.p50_ms:7.2f} | {row.p99_ms:7.2f}"
            f" | {row.requests_per_second / moto.requests_per_second:6.1f}"
            f" | {row.requests_per_second / local.requests_per_second:11.2f} |"
        )
    print()
    print(
        f"this KMS: TokenReviews {ours.authenticator.reviews}, SubjectAccessReviews "
        f"{ours.authorizer.reviews}, audit lines {lines}"
    )
    for name in names[:2]:
        row = mean[name]
        vs_moto = row.requests_per_second / moto.requests_per_second
        vs_local = row.requests_per_second / local.requests_per_second
        vs_core = row.requests_per_second / mean[LOCAL_KMS_ONE_CORE].requests_per_second
        print(
            f"{name}: >= 10x moto {'met' if vs_moto >= 10 else 'NOT met'} ({vs_moto:.1f}x); "
            f">= local-kms {'met' if vs_local >= 1 else 'NOT met'} ({vs_local:.2f}x; "
            f"{vs_core:.2f}x of it on one core)"
        )


def _mean(rows: list[Result]) -> Result:
    return Result(
        statistics.fmean(r.requests_per_second for r in rows),
        statistics.fmean(r.p50_ms for r in rows),
        statistics.fmean(r.p99_ms for r in rows),
        sum(r.errors for r in rows),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--python-load", action="store_true", help="Do not use wrk.")
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--request", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.load:
        load = python_load(
            arguments.load, arguments.request, arguments.connections, arguments.duration
        )
        print(json.dumps(asyncio.run(load)))
    else:
        asyncio.run(main(arguments))

"""Encrypt throughput and latency of the data-plane API against a bare aiohttp endpoint.

Both servers run in this process, one after the other, over TLS with the same generated
certificate, and do the same AES-256-GCM work (parse JSON, decode base64, seal a blob,
encode base64, answer JSON). The API adds what production adds: bearer authentication
(TokenReview double behind the real TTL cache), authorization (SubjectAccessReview double behind
the real cache: one review each for the whole run), the fail-closed audit line to a file,
metrics and error mapping. The load comes from ``wrk`` when installed, else from a Python
aiohttp load generator in a separate process.

    .venv/bin/python bench/bench_api.py [--duration 10] [--connections 32] [--rounds 2]

Goal: API requests/s >= 0.8 x bare.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from kms_operator import api as native_api
from kms_operator.crypto import blob as blobs
from kms_operator.crypto import primitives
from kms_operator.keys.service import KeyService
from kms_operator.kube.reviews import AccessDecision, UserInfo
from kms_operator.serving import tls
from kms_operator.serving.app import create_app
from kms_operator.serving.audit import FileAuditSink
from kms_operator.serving.auth import SubjectAccessReviewAuthorizer, TokenReviewAuthenticator
from kms_operator.settings import Settings
from kms_operator.store.rootkey import load_root_key_file
from kms_operator.store.sqlite import SqliteKeyStore

#: Shaped like a ServiceAccount token (a JWT), as the authenticator requires before a review.
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.YmVuY2gtc2lnbmF0dXJl"
NAMESPACE, KEY = "bench", "k1"
PLAINTEXT = os.urandom(256)
BODY = json.dumps({"plaintext": base64.b64encode(PLAINTEXT).decode()})


@dataclass
class Result:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


# -- the bare endpoint -----------------------------------------------------------------------


def bare_app(aead: primitives.Aead, key_id: object) -> web.Application:
    import uuid

    assert isinstance(key_id, uuid.UUID)

    async def encrypt(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        plaintext = base64.b64decode(body["plaintext"], validate=True)
        sealed = blobs.seal(aead, key_id, 1, plaintext, body.get("encryptionContext"))
        answer = {
            "ciphertextBlob": base64.b64encode(sealed).decode(),
            "keyId": str(key_id),
            "keyVersion": 1,
        }
        return web.Response(
            body=json.dumps(answer, separators=(",", ":")).encode(),
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_post("/v1/namespaces/{ns}/keys/{key}/encrypt", encrypt)
    return app


# -- load generators ---------------------------------------------------------------------------

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
"""


def _wrk_ms(text: str, label: str) -> float:
    match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {label}% latency in wrk output:\n{text}")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


async def run_wrk_script(
    url: str, script: Path, connections: int, duration: float
) -> tuple[float, float, float, int]:
    """Requests/s, p50 and p99 in ms, and non-2xx answers of one ``wrk`` run of ``script``."""
    process = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s", "--latency",
        "-s", str(script), url,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    output = (await process.communicate())[0].decode()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rps is None:
        raise RuntimeError(f"wrk failed:\n{output}")
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors:.*", output)
    if socket_errors:
        print(f"   wrk: {socket_errors.group(0)}", file=sys.stderr)
    return (
        float(rps.group(1)), _wrk_ms(output, "50"), _wrk_ms(output, "99"),
        int(errors.group(1)) if errors else 0,
    )  # fmt: skip


async def run_wrk(url: str, connections: int, duration: float, work_dir: Path) -> Result:
    script = work_dir / "post.lua"
    script.write_text(_WRK_SCRIPT.format(body=BODY, token=TOKEN))
    return Result("", *await run_wrk_script(url, script, connections, duration))


async def run_python_load(url: str, connections: int, duration: float, ca_file: Path) -> Result:
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--load", url, "--connections", str(connections),
        "--duration", str(duration), "--ca-file", str(ca_file),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    output = json.loads((await process.communicate())[0])
    return Result("", output["rps"], output["p50"], output["p99"], output["errors"])


async def _load(url: str, connections: int, duration: float, ca_file: Path) -> dict[str, float]:
    import ssl

    import aiohttp

    context = ssl.create_default_context(cafile=str(ca_file))
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections, ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while (start := time.perf_counter()) < deadline:
                async with session.post(url, data=BODY, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
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


# -- the benchmark -----------------------------------------------------------------------------


async def serve(app: web.Application, context: object) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context, backlog=512)  # type: ignore[arg-type]
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"https://127.0.0.1:{port}/v1/namespaces/{NAMESPACE}/keys/{KEY}/encrypt"


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="kms-bench-"))
    try:
        store = SqliteKeyStore(work / "store.db", load_root_key_file(work / "root.key"))
        service = KeyService(store)
        record = service.create_key(NAMESPACE, KEY)
        service.warm_cache()
        entry = service._index.entry(record.key_id)  # the bare endpoint seals with the same key
        assert entry is not None
        aead = service._index.aead(entry, 1)
        serving = tls.load_or_generate(Settings(tls_dir=work / "tls"))
        user = UserInfo.of("system:serviceaccount:bench:client", "uid", ["system:serviceaccounts"])

        def review_token(token: str) -> UserInfo | None:
            return user if token == TOKEN else None

        def review_access(
            who: UserInfo, verb: str, namespace: str, name: str | None, resource: str
        ) -> AccessDecision:
            return AccessDecision(True, "bench")

        authenticator = TokenReviewAuthenticator(review_token, cache_seconds=3600)
        authorizer = SubjectAccessReviewAuthorizer(review_access, cache_seconds=3600)
        audit = FileAuditSink(work / "audit.log")
        apps: dict[str, Callable[[], web.Application]] = {
            "bare aiohttp + AES-GCM": lambda: bare_app(aead, record.key_id),
            "kms API (auth cached, audit on)": lambda: create_app(
                service,
                front_ends=(native_api.add_routes,),
                authenticator=authenticator,
                authorizer=authorizer,
                audit=audit,
            ),
        }
        use_wrk = shutil.which("wrk") is not None and not args.python_load
        generator = "wrk -t1" if use_wrk else "python aiohttp (separate process)"
        print(
            f"encrypt of {len(PLAINTEXT)} bytes, {args.connections} connections, "
            f"{args.duration:g} s x {args.rounds} rounds each, TLS, load: {generator}"
        )
        results: dict[str, list[Result]] = {name: [] for name in apps}
        for round_number in range(args.rounds):
            for name, make in apps.items():
                runner, url = await serve(make(), serving.context)
                try:
                    if use_wrk:
                        result = await run_wrk(url, args.connections, args.duration, work)
                    else:
                        ca_file = serving.cert_file.parent / "ca.crt"
                        result = await run_python_load(
                            url, args.connections, args.duration, ca_file
                        )
                finally:
                    await runner.cleanup()
                result.name = name
                results[name].append(result)
                print(
                    f"  round {round_number + 1} {name:34} {result.requests_per_second:9.0f} req/s"
                    f"  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms"
                    f"  errors {result.errors}"
                )
        audit.close()
        lines = sum(1 for _ in (work / "audit.log").open())
        bare_name, api_name = list(apps)
        bare = _mean(results[bare_name])
        api = _mean(results[api_name])
        print()
        print(f"| {'server':34} | {'req/s':>9} | {'p50 ms':>7} | {'p99 ms':>7} | {'ratio':>5} |")
        print(f"|{'-' * 36}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 7}|")
        for name, row in ((bare_name, bare), (api_name, api)):
            ratio = row.requests_per_second / bare.requests_per_second
            print(
                f"| {name:34} | {row.requests_per_second:9.0f} | {row.p50_ms:7.2f} "
                f"| {row.p99_ms:7.2f} | {ratio:5.2f} |"
            )
        print()
        print(
            f"TokenReviews: {authenticator.reviews}, SubjectAccessReviews: "
            f"{authorizer.reviews}, audit lines written: {lines}"
        )
        ratio = api.requests_per_second / bare.requests_per_second
        print(f"goal >= 0.80 of bare: {'met' if ratio >= 0.8 else 'NOT met'} ({ratio:.2f})")
        authenticator.pool.close()
        authorizer.pool.close()
        store.close()
    finally:
        serving_dir = work
        shutil.rmtree(serving_dir, ignore_errors=True)


def _mean(rows: list[Result]) -> Result:
    return Result(
        rows[0].name,
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
    parser.add_argument("--ca-file", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.load:
        print(
            json.dumps(
                asyncio.run(
                    _load(
                        arguments.load, arguments.connections, arguments.duration, arguments.ca_file
                    )
                )
            )
        )
    else:
        asyncio.run(main(arguments))

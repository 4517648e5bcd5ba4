"""How much of bare AES-256-GCM the KeyService keeps: encrypt, decrypt, generate-data-key.

In process, no HTTP: a KeyService over a SQLite store in a temporary directory, its cache warm,
against ``AESGCM(key).encrypt(os.urandom(12), pt, aad)`` / ``decrypt`` in the same run (and
against one reused ``AESGCM`` object, the strictest baseline), for plaintexts of 32, 1024 and
4096 bytes, with and without an encryption context. The goal is a service/bare ratio of at
least 0.5.

    python bench/bench_service.py [--seconds N] [--size BYTES]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms_operator.crypto import blob as blobs
from kms_operator.keys.service import KeyService
from kms_operator.store.rootkey import load_root_key_file
from kms_operator.store.sqlite import SqliteKeyStore

NS = "bench"
KEY = "bench-key"
SIZES = (32, 1024, 4096)
CONTEXT = {"kms.cmk.dev/namespace": NS, "kms.cmk.dev/datakey": "database-password"}
GOAL = 0.5
_BATCH = 200


def rate(operation: Callable[[], object], seconds: float) -> float:
    """Operations per second of ``operation``, run in batches for about ``seconds``."""
    for _ in range(_BATCH):  # warm up
        operation()
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(_BATCH):
            operation()
        done += _BATCH
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start)


def measure(service: KeyService, seconds: float, sizes: tuple[int, ...]) -> list[tuple[str, ...]]:
    """One row per (operation, size, context): service rate, both bare rates and the ratios.

    Two baselines: ``AESGCM(key)`` built per call, as the one-liner an application would
    otherwise write, and one ``AESGCM`` object reused, the fastest Python can call AES-GCM.
    """
    key = os.urandom(32)
    reused = AESGCM(key)
    header = bytes(blobs.HEADER_SIZE)
    rows: list[tuple[str, ...]] = []

    def row(op: str, size: int, context: object, *rates: float) -> None:
        svc, fresh, kept = rates
        rows.append(
            (
                op,
                str(size),
                "yes" if context else "no",
                f"{svc:,.0f}",
                f"{fresh:,.0f}",
                f"{svc / fresh:.2f}",
                f"{kept:,.0f}",
                f"{svc / kept:.2f}",
                "ok" if svc / fresh >= GOAL else "BELOW",
            )
        )

    for context in (None, CONTEXT):
        aad = header + blobs.canonical_context(context)
        for size in sizes:
            plaintext = os.urandom(size)
            sealed = service.encrypt(NS, KEY, plaintext, context).ciphertext_blob
            nonce = os.urandom(12)
            bare_sealed = reused.encrypt(nonce, plaintext, aad)

            row(
                "encrypt",
                size,
                context,
                rate(lambda p=plaintext, c=context: service.encrypt(NS, KEY, p, c), seconds),
                rate(lambda p=plaintext, a=aad: AESGCM(key).encrypt(os.urandom(12), p, a), seconds),
                rate(lambda p=plaintext, a=aad: reused.encrypt(os.urandom(12), p, a), seconds),
            )
            row(
                "decrypt",
                size,
                context,
                rate(lambda s=sealed, c=context: service.decrypt(s, c), seconds),
                rate(lambda s=bare_sealed, a=aad, n=nonce: AESGCM(key).decrypt(n, s, a), seconds),
                rate(lambda s=bare_sealed, a=aad, n=nonce: reused.decrypt(n, s, a), seconds),
            )

        row(
            "generate-data-key",
            32,
            context,
            rate(lambda c=context: service.generate_data_key(NS, KEY, context=c), seconds),
            rate(lambda a=aad: AESGCM(key).encrypt(os.urandom(12), os.urandom(32), a), seconds),
            rate(lambda a=aad: reused.encrypt(os.urandom(12), os.urandom(32), a), seconds),
        )
    return rows


def print_table(rows: list[tuple[str, ...]]) -> None:
    head = (
        "operation",
        "bytes",
        "context",
        "service/s",
        "bare/s",
        "ratio",
        "bare reused/s",
        "ratio",
        "goal",
    )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    cells = ["{:<%d}" % w if i < 3 else "{:>%d}" % w for i, w in enumerate(widths)]  # noqa: UP031
    line = "  ".join(cells)
    print(line.format(*head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line.format(*r))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement (1.0)")
    parser.add_argument("--size", type=int, help="one plaintext size instead of 32, 1024, 4096")
    args = parser.parse_args(argv)
    sizes = (args.size,) if args.size else SIZES
    with tempfile.TemporaryDirectory(prefix="kms-bench-") as tmp:
        root_key = load_root_key_file(Path(tmp) / "root.key")
        store = SqliteKeyStore(Path(tmp) / "kms.db", root_key)
        try:
            service = KeyService(store)
            service.create_key(NS, KEY)
            service.warm_cache()
            rows = measure(service, args.seconds, sizes)
        finally:
            store.close()
    print(f"Python {sys.version.split()[0]}, {args.seconds:g} s per measurement")
    print_table(rows)
    below = [r for r in rows if r[-1] != "ok"]
    print(
        f"\n{len(rows) - len(below)}/{len(rows)} at or above {GOAL:.0%} of bare AES-GCM "
        "(AESGCM(key) per call); 'bare reused' keeps one AESGCM object, the strictest baseline"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

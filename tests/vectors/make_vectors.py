"""Generate tests/vectors/blob_vectors.json: known answers for the blob of DESIGN.md section 4.

Independent of ``kms_operator``: the bytes come from ``cryptography``'s AESGCM and ``struct``
packing written from the design text, and the canonical context is spelled out by hand, so the
vectors pin the wire format rather than whatever ``seal()`` happens to do.

Run ``python tests/vectors/make_vectors.py`` to rewrite the file; ``--check`` only compares.
The unit tests fail when the file and this generator disagree.
"""

from __future__ import annotations

import json
import struct
import sys
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

OUTPUT = Path(__file__).with_name("blob_vectors.json")

MAGIC = b"KMS1"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(32, 64))
KEY_ID = uuid.UUID("6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b")
NONCE = bytes.fromhex("000102030405060708090a0b")
HEADER_SIZE = 4 + 16 + 4 + 12
TAG_SIZE = 16


_SHORT_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _json_string(text: str) -> str:
    """A JSON string literal as RFC 8259 writes it, non-ASCII left as UTF-8."""
    out = ['"']
    for char in text:
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif ord(char) < 0x20:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def canonical(context: dict[str, str] | None) -> bytes:
    """``{"k":"v",...}`` with keys in code point order (= UTF-8 byte order), no spaces."""
    if not context:
        return b""
    members = [f"{_json_string(k)}:{_json_string(context[k])}" for k in sorted(context)]
    return ("{" + ",".join(members) + "}").encode("utf-8")


def header(key_id: uuid.UUID, version: int, nonce: bytes) -> bytes:
    return MAGIC + key_id.bytes + struct.pack(">I", version) + nonce


def make_blob(
    key: bytes,
    key_id: uuid.UUID,
    version: int,
    nonce: bytes,
    plaintext: bytes,
    *,
    context: dict[str, str] | None,
) -> bytes:
    head = header(key_id, version, nonce)
    return head + AESGCM(key).encrypt(nonce, plaintext, head + canonical(context))


def _valid(
    description: str,
    plaintext: bytes,
    context: dict[str, str] | None,
    *,
    version: int = 1,
    key_id: uuid.UUID = KEY_ID,
    nonce: bytes = NONCE,
) -> dict[str, Any]:
    blob = make_blob(KEY, key_id, version, nonce, plaintext, context=context)
    return {
        "description": description,
        "key": KEY.hex(),
        "key_id": str(key_id),
        "version": version,
        "nonce": nonce.hex(),
        "plaintext": plaintext.hex(),
        "context": context,
        "canonical_context": canonical(context).hex(),
        "blob": blob.hex(),
    }


def _flip(blob: bytes, index: int, bit: int = 0) -> bytes:
    changed = bytearray(blob)
    changed[index] ^= 1 << bit
    return bytes(changed)


MULTI_CONTEXT = {
    "kms.cmk.dev/namespace": "prod",
    "kms.cmk.dev/datakey": "db-password",
    "city": "Zürich",
    "note": 'a "quoted" \\ value',
    "ctrl": "tab\there, line\nbreak, nul\u0000",
    "日本": "東京",
    "Ωmega": "ελληνικά",
    "\uff01wide": "full-width key",
    "\U0001f511key": "astral key sorts after U+FF01 (code points, not UTF-16)",
}


def valid_vectors() -> list[dict[str, Any]]:
    return [
        _valid("empty context (None), short plaintext", b"hello, kms", None),
        _valid("empty context ({}) is the same as none", b"hello, kms", {}),
        _valid("one-entry context", b"hello, kms", {"purpose": "test"}),
        _valid(
            "multi-key context, non-ASCII, sorted keys, no spaces", b"hello, kms", MULTI_CONTEXT
        ),
        _valid("empty plaintext: header and tag only", b"", None),
        _valid("empty plaintext with context", b"", {"a": "b"}),
        _valid(
            "4096-byte plaintext (the maximum)",
            bytes((i * 7 + 3) % 256 for i in range(4096)),
            {"size": "max"},
        ),
        _valid(
            "big version number (big-endian uint32)",
            b"v",
            None,
            version=0x01020304,
            key_id=uuid.UUID("00000000-0000-4000-8000-000000000001"),
            nonce=bytes.fromhex("ffffffffffffffffffffffff"),
        ),
    ]


def invalid_vectors() -> list[dict[str, Any]]:
    context = {"purpose": "test"}
    good = make_blob(KEY, KEY_ID, 1, NONCE, b"hello, kms", context=context)
    tag_start = len(good) - TAG_SIZE
    cases: list[tuple[str, bytes, dict[str, str] | None]] = [
        ("bad magic KMS2", b"KMS2" + good[4:], context),
        ("bad magic kms1", b"kms1" + good[4:], context),
        ("flipped bit in magic", _flip(good, 0, 7), context),
        ("flipped bit in key id", _flip(good, 4), context),
        ("flipped bit in version", _flip(good, 23), context),
        ("version high bit", _flip(good, 20, 7), context),
        ("flipped bit in nonce", _flip(good, 24), context),
        ("flipped last nonce bit", _flip(good, HEADER_SIZE - 1, 7), context),
        ("flipped bit in ciphertext", _flip(good, HEADER_SIZE), context),
        ("flipped bit in tag", _flip(good, tag_start), context),
        ("flipped last tag bit", _flip(good, len(good) - 1, 7), context),
        ("wrong context value", good, {"purpose": "other"}),
        ("wrong context key", good, {"Purpose": "test"}),
        ("extra context entry", good, {"purpose": "test", "x": "y"}),
        ("context missing", good, None),
        (
            "context given for a blob made without one",
            make_blob(KEY, KEY_ID, 1, NONCE, b"x", context=None),
            {"purpose": "test"},
        ),
        (
            "made under another key",
            make_blob(OTHER_KEY, KEY_ID, 1, NONCE, b"hello, kms", context=context),
            context,
        ),
        ("truncated by one byte", good[:-1], context),
        ("truncated to header and tag minus one", good[: HEADER_SIZE + TAG_SIZE - 1], context),
        ("truncated to the header", good[:HEADER_SIZE], context),
        ("empty", b"", context),
        ("trailing byte", good + b"\x00", context),
    ]
    return [
        {"description": d, "key": KEY.hex(), "blob": b.hex(), "context": c} for d, b, c in cases
    ]


def build() -> dict[str, Any]:
    return {
        "format": 'DESIGN.md section 4: "KMS1" | key id (16) | version (u32 BE) | nonce (12) | '
        "AES-256-GCM ciphertext+tag; AAD = header || canonical(context)",
        "generator": "tests/vectors/make_vectors.py",
        "valid": valid_vectors(),
        "invalid": invalid_vectors(),
    }


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

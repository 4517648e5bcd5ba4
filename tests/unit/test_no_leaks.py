"""No material and no plaintext in logs, error messages or reprs (DESIGN.md section 2: no export).

A full lifecycle runs with every logger at DEBUG, a plaintext canary and imported material the
test knows, through the failures that tempt a developer to log detail (wrong context, tampered
blob, wrong material, bad and expired tokens). Everything a person could read afterwards, log
records, exception messages, tracebacks and reprs, is searched for the secrets in raw, hex,
base64 and urlsafe base64 form.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from tests.support.changes import fire, rotate, set_enabled
from tests.support.clocks import ManualClock
from tests.support.importing import Importer

from kms_operator.crypto import primitives
from kms_operator.crypto.wrapping import WrappingAlgorithm
from kms_operator.errors import KmsError
from kms_operator.keys.service import KeyService, Timer
from kms_operator.store.records import Origin
from kms_operator.store.rootkey import RootKey
from kms_operator.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.unit

NS = "leaks"
DAY = timedelta(days=1)


def encodings(secret: bytes) -> dict[str, str]:
    """Every way a secret could be printed, by name (failures name the form, never show it)."""
    b64 = base64.b64encode(secret).decode()
    url = base64.urlsafe_b64encode(secret).decode()
    forms = {
        "hex": secret.hex(),
        "HEX": secret.hex().upper(),
        "spaced hex": secret.hex(" "),
        "colon hex": secret.hex(":"),
        "base64": b64,
        "unpadded base64": b64.rstrip("="),
        "urlsafe base64": url,
        "unpadded urlsafe base64": url.rstrip("="),
        "bytes repr": repr(secret)[2:-1],  # b'...' with escapes, as a repr of bytes shows it
        "raw": secret.decode("latin-1"),
    }
    # A short secret (a 1-byte data key) would match by chance; require some length.
    return {kind: form for kind, form in forms.items() if len(form) >= 12}


class Evidence:
    """Everything readable collected during the run: messages, tracebacks and reprs."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, *objects: object) -> None:
        for obj in objects:
            self.texts.append(repr(obj))
            self.texts.append(str(obj))

    def expect_error(self, call: Callable[[], object]) -> KmsError:
        with pytest.raises(KmsError) as caught:
            call()
        exc = caught.value
        self.add(exc, exc.message, exc.args)
        self.texts.append("".join(traceback.format_exception(exc)))
        return exc


@pytest.fixture
def debug_log(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """Every logger at DEBUG into a StringIO on the root logger, besides caplog."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s %(args)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("kms_operator"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def test_a_full_lifecycle_leaks_nothing(
    *,
    service: KeyService,
    store: SqliteKeyStore,
    clock: ManualClock,
    importer: Importer,
    root_key: RootKey,
    tmp_path: Path,
    reopen: Callable[[], KeyService],
    debug_log: io.StringIO,
    caplog: pytest.LogCaptureFixture,
) -> None:
    canary = b"CANARY-PLAINTEXT-" + os.urandom(8).hex().encode()
    material = os.urandom(32)
    wrong_material = os.urandom(32)
    secrets: list[bytes] = [canary, material, wrong_material]
    seen = Evidence()
    ctx = {"purpose": "leak-test"}

    # A KMS key: crypto, failures, rotation, data keys, deletion and cancellation.
    kms = service.create_key(NS, "native", aliases=["alias/native"], rotation_period_days=90)
    sealed = service.encrypt(NS, "alias/native", canary, ctx)
    opened = service.decrypt(sealed.ciphertext_blob, ctx)
    assert opened.plaintext == canary
    seen.add(kms, *kms.versions, sealed, opened, service, store)
    blob = sealed.ciphertext_blob
    seen.expect_error(lambda: service.decrypt(blob, {"purpose": "other"}))
    seen.expect_error(lambda: service.decrypt(blob[:-1] + bytes([blob[-1] ^ 1]), ctx))
    seen.expect_error(lambda: service.decrypt(blob[:40], ctx))
    seen.expect_error(lambda: service.decrypt(blob[:4] + uuid.uuid4().bytes + blob[20:], ctx))
    seen.expect_error(lambda: service.encrypt(NS, "native", canary * 300))
    seen.expect_error(lambda: service.encrypt("elsewhere", "native", canary))
    for spec, number in (("AES_256", None), ("AES_128", None), (None, 64)):
        data_key = service.generate_data_key(
            NS, "native", key_spec=spec, number_of_bytes=number, context=ctx
        )
        assert data_key.plaintext is not None
        secrets.append(data_key.plaintext)
        seen.add(data_key)
    hidden = service.generate_data_key(NS, "native", with_plaintext=False)
    secrets.append(service.decrypt(hidden.ciphertext_blob).plaintext)
    seen.add(hidden)
    moved = service.re_encrypt(blob, NS, "native", source_context=ctx, destination_context=ctx)
    seen.add(moved)
    seen.expect_error(lambda: service.re_encrypt(blob, NS, "native"))
    seen.add(rotate(service, kms.key_id))
    seen.add(set_enabled(service, kms.key_id, False))
    seen.expect_error(lambda: service.decrypt(blob, ctx))
    seen.add(set_enabled(service, kms.key_id, True))
    clock.advance(91 * DAY)
    seen.add(fire(service, kms.key_id, Timer.ROTATION))
    seen.add(service.schedule_deletion(kms.key_id, 7))
    seen.expect_error(lambda: service.encrypt(NS, "native", canary))
    seen.expect_error(lambda: service.decrypt(blob, ctx))
    seen.add(service.cancel_deletion(kms.key_id))
    seen.expect_error(lambda: service.cancel_deletion(kms.key_id))
    for version in (1, 2, 3):
        generated = store.load_material(kms.key_id, version)
        assert generated is not None
        secrets.append(generated)

    # An EXTERNAL key: import, wrong material, bad and expired tokens, deletion, expiry.
    byok = service.create_key(NS, "byok", origin=Origin.EXTERNAL)
    other = service.create_key(NS, "byok-2", origin=Origin.EXTERNAL)
    for algorithm in WrappingAlgorithm:
        params = importer.parameters(byok.key_id, algorithm)
        loaded = store.load_import_parameters(params.token)
        assert loaded is not None
        secrets.append(loaded[1])  # the wrapping private key
        seen.add(
            params,
            *service.import_material(byok.key_id, params.token, importer.wrap(params, material)),
        )
    sealed_byok = service.encrypt(NS, "byok", canary, ctx)
    seen.add(service.delete_imported_material(byok.key_id))
    seen.expect_error(lambda: service.decrypt(sealed_byok.ciphertext_blob, ctx))
    seen.expect_error(lambda: importer.import_material(byok.key_id, wrong_material))
    seen.expect_error(lambda: importer.import_material(byok.key_id, material[:16]))
    params = importer.parameters(byok.key_id)
    wrapped = importer.wrap(params, material)
    secrets.append(wrapped)
    other_params = importer.parameters(other.key_id)
    seen.expect_error(lambda: service.import_material(byok.key_id, other_params.token, wrapped))
    seen.expect_error(lambda: service.import_material(byok.key_id, "kmsit1_forged", wrapped))
    seen.expect_error(lambda: service.import_material(byok.key_id, params.token, wrapped[:-3]))
    seen.expect_error(
        lambda: service.import_material(byok.key_id, params.token, wrapped, clock.now() - DAY)
    )
    seen.add(*service.import_material(byok.key_id, params.token, wrapped, clock.now() + DAY))
    assert service.decrypt(sealed_byok.ciphertext_blob, ctx).plaintext == canary
    clock.advance(2 * DAY)
    seen.expect_error(lambda: service.import_material(byok.key_id, params.token, wrapped))
    seen.expect_error(lambda: service.encrypt(NS, "byok", canary))
    seen.add(fire(service, byok.key_id, Timer.EXPIRY))

    # Destruction, and a restart over the same store.
    seen.add(service.schedule_deletion(byok.key_id, 7))
    clock.advance(8 * DAY)
    seen.add(fire(service, byok.key_id, Timer.DESTRUCTION))
    seen.expect_error(lambda: service.decrypt(sealed_byok.ciphertext_blob, ctx))
    restarted = reopen()
    restarted.warm_cache()
    seen.add(restarted, *restarted.keys(), root_key, primitives.Aead(material))
    seen.add(*service._index.aeads())
    secrets.append((tmp_path / "secrets" / "root.key").read_bytes())

    logged = [debug_log.getvalue(), caplog.text]
    logged += [repr(record.args) + record.getMessage() for record in caplog.records]
    assert "invalid ciphertext" in debug_log.getvalue()  # the debug detail was captured
    haystacks = {"logs": "\n".join(logged), "errors and reprs": "\n".join(seen.texts)}
    for where, text in haystacks.items():
        for number, secret in enumerate(secrets):
            for kind, form in encodings(secret).items():
                assert form not in text, f"secret #{number} appears in the {where} as {kind}"
    assert canary.decode() not in "\n".join(haystacks.values())


def test_reprs_show_no_material(service: KeyService, importer: Importer) -> None:
    material = os.urandom(32)
    key = service.create_key(NS, "orders")
    byok = service.create_key(NS, "byok", origin=Origin.EXTERNAL)
    record, _ = importer.import_material(byok.key_id, material)
    plaintext = b"CANARY-PLAINTEXT-" + os.urandom(8).hex().encode()
    sealed = service.encrypt(NS, "orders", plaintext)
    opened = service.decrypt(sealed.ciphertext_blob)
    data_key = service.generate_data_key(NS, "orders")
    assert data_key.plaintext is not None
    moved = service.re_encrypt(sealed.ciphertext_blob, NS, "byok")
    root_key_bytes = os.urandom(32)
    objects: list[object] = [
        key,
        *key.versions,
        record,
        *record.versions,
        sealed,
        opened,
        data_key,
        moved,
        service,
        primitives.Aead(material),
        RootKey(root_key_bytes),
    ]
    secrets = [material, plaintext, data_key.plaintext, root_key_bytes, sealed.ciphertext_blob]

    for obj in objects:
        for text in (repr(obj), str(obj)):
            for number, secret in enumerate(secrets):
                for kind, form in encodings(secret).items():
                    assert form not in text, f"{type(obj).__name__} shows secret #{number} ({kind})"
    assert "fingerprint" not in repr(record.versions[0])

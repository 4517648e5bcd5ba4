"""The KMS v2 plugin's API: the committed Python modules are what its .proto generates, and the
.proto has the wire of k8s.io/kms apis/v2 (package, service, every field's name, number, type).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from kms_operator.kmsplugin.v2 import api_pb2

pytestmark = pytest.mark.unit

_REPO = Path(__file__).resolve().parents[2]
_GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")
_PACKAGE_DIR = Path("kms_operator/kmsplugin/v2")

_STRING, _BYTES, _MESSAGE = (
    FieldDescriptor.TYPE_STRING,
    FieldDescriptor.TYPE_BYTES,
    FieldDescriptor.TYPE_MESSAGE,
)
#: k8s.io/kms v0.37.2 apis/v2/api.proto: message -> (field name, number, type) in order.
UPSTREAM_FIELDS = {
    "StatusRequest": [],
    "StatusResponse": [("version", 1, _STRING), ("healthz", 2, _STRING), ("key_id", 3, _STRING)],
    "DecryptRequest": [
        ("ciphertext", 1, _BYTES),
        ("uid", 2, _STRING),
        ("key_id", 3, _STRING),
        ("annotations", 4, _MESSAGE),
    ],
    "DecryptResponse": [("plaintext", 1, _BYTES)],
    "EncryptRequest": [("plaintext", 1, _BYTES), ("uid", 2, _STRING)],
    "EncryptResponse": [
        ("ciphertext", 1, _BYTES),
        ("key_id", 2, _STRING),
        ("annotations", 3, _MESSAGE),
    ],
}
UPSTREAM_METHODS = [
    ("Status", "StatusRequest", "StatusResponse"),
    ("Decrypt", "DecryptRequest", "DecryptResponse"),
    ("Encrypt", "EncryptRequest", "EncryptResponse"),
]


def test_the_committed_modules_are_what_the_proto_generates(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(_REPO / "hack/proto/generate.sh"), str(tmp_path)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    for name in _GENERATED:
        committed = (_REPO / "src" / _PACKAGE_DIR / name).read_text()
        assert (tmp_path / _PACKAGE_DIR / name).read_text() == committed, (
            f"{name} is stale: run hack/proto/generate.sh and commit the result"
        )


def test_the_wire_is_k8s_kms_apis_v2() -> None:
    descriptor = api_pb2.DESCRIPTOR

    assert descriptor.package == "v2"
    assert sorted(descriptor.message_types_by_name) == sorted(UPSTREAM_FIELDS)
    for message, fields in UPSTREAM_FIELDS.items():
        found = descriptor.message_types_by_name[message].fields
        assert [(f.name, f.number, f.type) for f in found] == fields, message
    for message in ("DecryptRequest", "EncryptResponse"):
        annotations = descriptor.message_types_by_name[message].fields_by_name["annotations"]
        entry = annotations.message_type
        assert entry.GetOptions().map_entry
        assert [(f.name, f.type) for f in entry.fields] == [("key", _STRING), ("value", _BYTES)]

    service = descriptor.services_by_name["KeyManagementService"]
    assert service.full_name == "v2.KeyManagementService"
    assert [(m.name, m.input_type.name, m.output_type.name) for m in service.methods] == (
        UPSTREAM_METHODS
    )

"""The reference servers of the AWS KMS benchmark answer boto3: local-kms (built by
hack/tools/ensure.sh) and moto's server each create a key, encrypt and decrypt under it.

This checks the baselines of bench/ and the helpers of tests/support/awstools.py, not the
operator's AWS front end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import boto3
import pytest
from tests.support.awstools import REGION, local_kms_server, moto_server

from kms_operator.devcluster.processes import free_port

PLAINTEXT = b"a benchmark baseline round trip"
CONTEXT = {"purpose": "reference-server-test"}

Server = Callable[[int], contextlib.AbstractContextManager[str]]


@pytest.mark.parametrize("server", [local_kms_server, moto_server], ids=["local-kms", "moto"])
def test_create_key_encrypt_decrypt_round_trip(server: Server) -> None:
    with server(free_port()) as url:
        kms = boto3.client(
            "kms",
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id="reference-server",
            aws_secret_access_key="any-secret-is-accepted",
        )
        metadata = kms.create_key(Description="reference round trip")["KeyMetadata"]
        assert metadata["Enabled"] is True
        assert metadata["Arn"].startswith(f"arn:aws:kms:{REGION}:")

        encrypted = kms.encrypt(
            KeyId=metadata["KeyId"], Plaintext=PLAINTEXT, EncryptionContext=CONTEXT
        )
        assert encrypted["KeyId"] == metadata["Arn"]
        assert PLAINTEXT not in encrypted["CiphertextBlob"]

        decrypted = kms.decrypt(
            CiphertextBlob=encrypted["CiphertextBlob"], EncryptionContext=CONTEXT
        )
        assert decrypted["KeyId"] == metadata["Arn"]
        assert decrypted["Plaintext"] == PLAINTEXT

        with pytest.raises(kms.exceptions.InvalidCiphertextException):
            kms.decrypt(
                CiphertextBlob=encrypted["CiphertextBlob"], EncryptionContext={"other": "x"}
            )

"""Wrapping of imported material: RSAES_OAEP_SHA_256 and RSA_AES_KEY_WRAP_SHA_256.

The layouts are checked against ``cryptography`` used directly, as a user's own tooling (or
AWS's documented OpenSSL recipe) would do it. RSA keys are generated once per module.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kms_operator.crypto import wrapping
from kms_operator.crypto.wrapping import UnwrapFailed, WrappingAlgorithm, WrappingKeySpec

pytestmark = pytest.mark.unit

MATERIAL = bytes(range(100, 132))
ALGORITHMS = list(WrappingAlgorithm)
SPECS = list(WrappingKeySpec)
KWP_OF_32_BYTES = 40  # RFC 5649: 8-byte block of integrity data + 32 bytes, already aligned


def _oaep(algorithm: hashes.HashAlgorithm | None = None) -> padding.OAEP:
    algorithm = algorithm or hashes.SHA256()
    return padding.OAEP(mgf=padding.MGF1(algorithm), algorithm=algorithm, label=None)


@pytest.fixture(scope="module")
def key_pairs() -> dict[WrappingKeySpec, tuple[bytes, bytes]]:
    """One pair per size (4096 is slow: generated once for the module)."""
    return {spec: wrapping.generate_wrapping_key(spec) for spec in SPECS}


@pytest.fixture(scope="module")
def other_pair() -> tuple[bytes, bytes]:
    return wrapping.generate_wrapping_key(WrappingKeySpec.RSA_2048)


def _private(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _public(pem: bytes) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(pem)
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def test_key_spec_bits() -> None:
    assert [spec.bits for spec in SPECS] == [2048, 3072, 4096]


@pytest.mark.parametrize("spec", SPECS)
def test_generated_pair_matches_the_spec(
    spec: WrappingKeySpec, key_pairs: dict[WrappingKeySpec, tuple[bytes, bytes]]
) -> None:
    private_pem, public_pem = key_pairs[spec]
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    private, public = _private(private_pem), _public(public_pem)
    assert private.key_size == public.key_size == spec.bits
    assert private.public_key().public_numbers() == public.public_numbers()
    assert public.public_numbers().e == 65537


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_round_trip(
    algorithm: WrappingAlgorithm,
    spec: WrappingKeySpec,
    key_pairs: dict[WrappingKeySpec, tuple[bytes, bytes]],
) -> None:
    private_pem, public_pem = key_pairs[spec]
    wrapped = wrapping.wrap_material(algorithm, public_pem, MATERIAL)
    assert MATERIAL not in wrapped
    assert wrapping.unwrap_material(algorithm, private_pem, wrapped) == MATERIAL
    # Randomised: wrapping twice gives different bytes.
    assert wrapping.wrap_material(algorithm, public_pem, MATERIAL) != wrapped


@pytest.mark.parametrize("spec", SPECS)
def test_rsaes_oaep_sha_256_layout(
    spec: WrappingKeySpec, key_pairs: dict[WrappingKeySpec, tuple[bytes, bytes]]
) -> None:
    private_pem, public_pem = key_pairs[spec]
    wrapped = wrapping.wrap_material(WrappingAlgorithm.RSAES_OAEP_SHA_256, public_pem, MATERIAL)
    assert len(wrapped) == spec.bits // 8
    assert _private(private_pem).decrypt(wrapped, _oaep()) == MATERIAL
    # SHA-256 for both the hash and MGF1: SHA-1 OAEP does not open it.
    with pytest.raises(ValueError):
        _private(private_pem).decrypt(wrapped, _oaep(hashes.SHA1()))  # noqa: S303
    # A user's own OAEP-SHA-256 wrapping is accepted.
    mine = _public(public_pem).encrypt(MATERIAL, _oaep())
    assert (
        wrapping.unwrap_material(WrappingAlgorithm.RSAES_OAEP_SHA_256, private_pem, mine)
        == MATERIAL
    )


@pytest.mark.parametrize("spec", SPECS)
def test_rsa_aes_key_wrap_sha_256_layout(
    spec: WrappingKeySpec, key_pairs: dict[WrappingKeySpec, tuple[bytes, bytes]]
) -> None:
    """RSA-OAEP-SHA-256(ephemeral 32-byte AES key) || AES-KWP(ephemeral, material)."""
    private_pem, public_pem = key_pairs[spec]
    wrapped = wrapping.wrap_material(
        WrappingAlgorithm.RSA_AES_KEY_WRAP_SHA_256, public_pem, MATERIAL
    )
    modulus = spec.bits // 8
    assert len(wrapped) == modulus + KWP_OF_32_BYTES
    ephemeral = _private(private_pem).decrypt(wrapped[:modulus], _oaep())
    assert len(ephemeral) == 32
    assert keywrap.aes_key_unwrap_with_padding(ephemeral, wrapped[modulus:]) == MATERIAL
    # And the other way: a user's own two-step wrapping is accepted.
    my_ephemeral = bytes(range(32))
    mine = _public(public_pem).encrypt(my_ephemeral, _oaep()) + (
        keywrap.aes_key_wrap_with_padding(my_ephemeral, MATERIAL)
    )
    assert (
        wrapping.unwrap_material(WrappingAlgorithm.RSA_AES_KEY_WRAP_SHA_256, private_pem, mine)
        == MATERIAL
    )


@pytest.mark.parametrize("size", [1, 16, 31, 33, 64])
def test_aes_key_wrap_carries_any_material_size(
    size: int, key_pairs: dict[WrappingKeySpec, tuple[bytes, bytes]]
) -> None:
    """Sizes are checked by the service (IncorrectKeyMaterial), not by the wrapping."""
    private_pem, public_pem = key_pairs[WrappingKeySpec.RSA_2048]
    material = bytes(size)
    algorithm = WrappingAlgorithm.RSA_AES_KEY_WRAP_SHA_256
    wrapped = wrapping.wrap_material(algorithm, public_pem, material)
    assert wrapping.unwrap_material(algorithm, private_pem, wrapped) == material


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_wrong_private_key(
    algorithm: WrappingAlgorithm,
    key_pairs: dict[WrappingKeySpec, tuple[bytes, bytes]],
    other_pair: tuple[bytes, bytes],
) -> None:
    _, public_pem = key_pairs[WrappingKeySpec.RSA_2048]
    wrapped = wrapping.wrap_material(algorithm, public_pem, MATERIAL)
    with pytest.raises(UnwrapFailed):
        wrapping.unwrap_material(algorithm, other_pair[0], wrapped)


@pytest.mark.parametrize("spec", [WrappingKeySpec.RSA_2048, WrappingKeySpec.RSA_4096])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_wrong_private_key_of_another_size(
    algorithm: WrappingAlgorithm,
    spec: WrappingKeySpec,
    key_pairs: dict[WrappingKeySpec, tuple[bytes, bytes]],
) -> None:
    _, public_pem = key_pairs[WrappingKeySpec.RSA_3072]
    wrapped = wrapping.wrap_material(algorithm, public_pem, MATERIAL)
    with pytest.raises(UnwrapFailed):
        wrapping.unwrap_material(algorithm, key_pairs[spec][0], wrapped)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_interesting_truncation(
    algorithm: WrappingAlgorithm, key_pairs: dict[WrappingKeySpec, tuple[bytes, bytes]]
) -> None:
    private_pem, public_pem = key_pairs[WrappingKeySpec.RSA_2048]
    wrapped = wrapping.wrap_material(algorithm, public_pem, MATERIAL)
    modulus = 256
    lengths = {0, 1, 8, 16, modulus - 1, modulus, modulus + 1, modulus + 8, modulus + 16}
    lengths |= {modulus + 24, modulus + 32, len(wrapped) - 8, len(wrapped) - 1}
    for length in sorted(n for n in lengths if n < len(wrapped)):
        with pytest.raises(UnwrapFailed):
            wrapping.unwrap_material(algorithm, private_pem, wrapped[:length])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_extra_bytes_are_refused(
    algorithm: WrappingAlgorithm, key_pairs: dict[WrappingKeySpec, tuple[bytes, bytes]]
) -> None:
    private_pem, public_pem = key_pairs[WrappingKeySpec.RSA_2048]
    wrapped = wrapping.wrap_material(algorithm, public_pem, MATERIAL)
    for extra in (b"\x00", b"\x00" * 8):
        with pytest.raises(UnwrapFailed):
            wrapping.unwrap_material(algorithm, private_pem, wrapped + extra)


def test_one_algorithm_does_not_open_the_other(
    key_pairs: dict[WrappingKeySpec, tuple[bytes, bytes]],
) -> None:
    private_pem, public_pem = key_pairs[WrappingKeySpec.RSA_2048]
    oaep, kwp = WrappingAlgorithm.RSAES_OAEP_SHA_256, WrappingAlgorithm.RSA_AES_KEY_WRAP_SHA_256
    with pytest.raises(UnwrapFailed):
        wrapping.unwrap_material(
            kwp, private_pem, wrapping.wrap_material(oaep, public_pem, MATERIAL)
        )
    with pytest.raises(UnwrapFailed):
        wrapping.unwrap_material(
            oaep, private_pem, wrapping.wrap_material(kwp, public_pem, MATERIAL)
        )


@pytest.mark.parametrize("ephemeral_size", [16, 24, 31, 33])
def test_key_wrap_with_an_ephemeral_key_that_is_not_32_bytes(
    ephemeral_size: int, key_pairs: dict[WrappingKeySpec, tuple[bytes, bytes]]
) -> None:
    private_pem, public_pem = key_pairs[WrappingKeySpec.RSA_2048]
    ephemeral = bytes(range(ephemeral_size))
    kek = ephemeral if ephemeral_size in (16, 24) else bytes(32)
    wrapped = _public(public_pem).encrypt(ephemeral, _oaep()) + (
        keywrap.aes_key_wrap_with_padding(kek, MATERIAL)
    )
    with pytest.raises(UnwrapFailed):
        wrapping.unwrap_material(WrappingAlgorithm.RSA_AES_KEY_WRAP_SHA_256, private_pem, wrapped)


@given(algorithm=st.sampled_from(ALGORITHMS), data=st.data())
@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_bit_flip_is_refused(
    algorithm: WrappingAlgorithm,
    data: st.DataObject,
    key_pairs: dict[WrappingKeySpec, tuple[bytes, bytes]],
) -> None:
    private_pem, public_pem = key_pairs[WrappingKeySpec.RSA_2048]
    wrapped = bytearray(wrapping.wrap_material(algorithm, public_pem, MATERIAL))
    bit = data.draw(st.integers(0, len(wrapped) * 8 - 1), label="bit")
    wrapped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(UnwrapFailed):
        wrapping.unwrap_material(algorithm, private_pem, bytes(wrapped))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("where", ["rsa-first", "rsa-last", "kwp-first", "kwp-last"])
def test_corrupted_parts_are_refused(
    algorithm: WrappingAlgorithm,
    where: str,
    key_pairs: dict[WrappingKeySpec, tuple[bytes, bytes]],
) -> None:
    private_pem, public_pem = key_pairs[WrappingKeySpec.RSA_2048]
    wrapped = bytearray(wrapping.wrap_material(algorithm, public_pem, MATERIAL))
    index = {"rsa-first": 0, "rsa-last": 255, "kwp-first": 256, "kwp-last": -1}[where]
    if algorithm is WrappingAlgorithm.RSAES_OAEP_SHA_256 and where.startswith("kwp"):
        index = 128  # no AES part: corrupt the middle of the RSA block instead
    wrapped[index] ^= 0xFF
    with pytest.raises(UnwrapFailed):
        wrapping.unwrap_material(algorithm, private_pem, bytes(wrapped))


def test_unwrap_failed_says_nothing() -> None:
    assert str(UnwrapFailed()) == ""

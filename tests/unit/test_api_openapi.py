"""The OpenAPI document against what the API does: it is generated from the declarations of
``api/models.py``, and these tests check that the two cannot drift apart.

* the document's schemas are valid JSON Schema (2020-12) and every example validates;
* every route, called with each request example of its operation, answers 200 with a body the
  document's 200 response accepts; each error answer of each status validates too, and its
  status is one the operation documents;
* the models refuse every body the schema refuses (a list of bad bodies, then hypothesis).
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from tests.support.api import ALICE, NS, OTHER_NS, Api, b64, error, serve
from tests.support.changes import set_enabled

from kms_operator.api import models, openapi
from kms_operator.api.bodies import Request
from kms_operator.errors import InvalidRequest
from kms_operator.keys.service import KeyService
from kms_operator.kube.reviews import UserInfo
from kms_operator.serving.auth import ReviewsBusy
from kms_operator.serving.calls import STATE

pytestmark = pytest.mark.unit

DOCUMENT = openapi.document()
SCHEMAS = DOCUMENT["components"]["schemas"]
REQUESTS: list[type[Request]] = sorted(
    {op.request for op in openapi.OPERATIONS if op.request is not None},
    key=lambda body: body.__name__,
)
#: Each operation by id, and the concrete path the tests call for it.
OPERATIONS = {op.operation_id: op for op in openapi.OPERATIONS}
PATHS = {
    "{ns}": NS,
    "{key}": "payments",
    "{alias}": "team/orders",
}


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A validator of ``schema`` whose ``$ref`` to ``#/components/...`` resolve in the document."""
    return Draft202012Validator({**schema, "components": DOCUMENT["components"]})


@functools.cache
def component(name: str) -> Draft202012Validator:
    return validator({"$ref": f"#/components/schemas/{name}"})


def response_schema(operation_id: str, status: int) -> dict[str, Any]:
    op = OPERATIONS[operation_id]
    responses = DOCUMENT["paths"][op.path][op.method]["responses"]
    assert str(status) in responses, (operation_id, status, sorted(responses))
    return responses[str(status)]["content"]["application/json"]["schema"]


def path_of(operation_id: str) -> str:
    path = OPERATIONS[operation_id].path
    for template, value in PATHS.items():
        path = path.replace(template, value)
    return path


@pytest.fixture
async def api(service: KeyService, tmp_path: Path) -> AsyncIterator[Api]:
    async with serve(service, tmp_path) as served:
        # The re-encrypt example's destination, by alias in its own namespace.
        service.create_key("archive", "archive", aliases=("alias/archive",))
        served.grants.allow("alice", "encrypt,decrypt,generatedatakey,get", NS)
        served.grants.allow("alice", "encrypt", "archive")
        yield served


# -- the document itself ---------------------------------------------------------------------


def test_the_document_is_json_and_its_schemas_are_valid_json_schema() -> None:
    assert json.loads(json.dumps(DOCUMENT)) == DOCUMENT
    for name, schema in SCHEMAS.items():
        Draft202012Validator.check_schema(schema)
        assert schema.get("description"), f"{name} needs a docstring: it is its description"
        assert not schema["description"].startswith(f"{name}("), name  # not the dataclass's


def test_every_example_validates_against_its_schema() -> None:
    with_examples = {name for name, schema in SCHEMAS.items() if schema.get("examples")}
    requests = {body.__name__ for body in REQUESTS}
    responses = {op.response.__name__ for op in openapi.OPERATIONS}
    assert with_examples >= requests | responses
    for name in with_examples:
        for example in SCHEMAS[name]["examples"]:
            component(name).validate(example)


def test_request_examples_parse_as_their_models() -> None:
    for body in REQUESTS:
        for example in body.EXAMPLES:
            body.parse(json.dumps(example).encode())


def test_error_codes_and_statuses_are_the_classes_the_server_raises() -> None:
    codes = SCHEMAS["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    assert codes == sorted({error.code for error in openapi.ERRORS})
    for op in openapi.OPERATIONS:
        responses = DOCUMENT["paths"][op.path][op.method]["responses"]
        for error_class in op.errors:
            described = responses[str(error_class.status)]["description"]
            assert f"{error_class.code}: {openapi.ERRORS[error_class]}" in described
        assert "500" in responses and "503" in responses
        assert ("408" in responses) == (op.request is not None)


# -- every route's answers against the document ---------------------------------------------


def request_examples() -> list[tuple[str, dict[str, Any]]]:
    cases: list[tuple[str, dict[str, Any]]] = []
    for op in openapi.OPERATIONS:
        examples = op.request.EXAMPLES if op.request is not None else ({},)
        cases += [(op.operation_id, dict(example)) for example in examples]
    return cases


@pytest.mark.parametrize(
    ("operation_id", "example"),
    request_examples(),
    ids=[f"{op}-{n}" for n, (op, _) in enumerate(request_examples())],
)
async def test_each_route_answers_its_request_examples_as_documented(
    api: Api, operation_id: str, example: dict[str, Any]
) -> None:
    op = OPERATIONS[operation_id]
    if "ciphertextBlob" in example:  # the example's blob is of another store: make a real one
        context = example.get("encryptionContext") or example.get("sourceEncryptionContext")
        example["ciphertextBlob"] = await api.encrypt(b"card 4111", context)
    if op.method == "get":
        status, answer = await api.call("GET", path_of(operation_id))
    else:
        status, answer = await api.post(path_of(operation_id), example)
    assert status == 200, answer
    validator(response_schema(operation_id, 200)).validate(answer)


async def test_error_answers_validate_and_their_statuses_are_documented(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = await api.encrypt(b"x")
    api.service.create_key(OTHER_NS, "closed")
    set_enabled(api.service, api.service.resolve(OTHER_NS, "closed").key_id, False)
    api.grants.allow("alice", "encrypt", OTHER_NS)
    other = f"/v1/namespaces/{OTHER_NS}/keys"
    not_a_blob = b64(b"not a blob, but long enough to have a header....")
    cases: list[tuple[str, str, Any, int]] = [
        ("encrypt", path_of("encrypt"), {"plaintext": "***"}, 400),
        ("decrypt", "/v1/decrypt", {"ciphertextBlob": not_a_blob}, 400),
        ("random", "/v1/random", {"numberOfBytes": 1}, 401),
        ("generateDataKey", f"{other}/archive/generate-data-key", {}, 403),
        ("encrypt", f"/v1/namespaces/{NS}/keys/nope/encrypt", {"plaintext": "eA=="}, 404),
        ("describeKey", f"/v1/namespaces/{NS}/keys/nope", None, 404),
        ("encrypt", f"{other}/closed/encrypt", {"plaintext": "eA=="}, 409),
        ("reEncrypt", "/v1/re-encrypt", {"ciphertextBlob": blob, "destination": {"key": "a"}}, 400),
    ]
    for operation_id, path, body, expected in cases:
        method = "GET" if body is None else "POST"
        status, answer = await api.call(
            method, path, body, token=None if expected == 401 else ALICE
        )
        assert status == expected, (path, answer)
        validator(response_schema(operation_id, status)).validate(answer)

    async def busy(token: str) -> UserInfo:
        raise ReviewsBusy("too many callers are being checked at once; retry in a moment")

    monkeypatch.setattr(api.client.server.app[STATE].authenticator, "authenticate", busy)
    status, answer = await api.post(path_of("encrypt"), {"plaintext": "eA=="})
    assert status == 503 and error(answer)[0] == "ServiceUnavailable"
    validator(response_schema("encrypt", 503)).validate(answer)


# -- the models refuse what the schema refuses ----------------------------------------------

_LONG_PLAINTEXT = b64(bytes(models.MAX_PLAINTEXT + 3))
BAD_BODIES: list[tuple[type[Request], Any]] = [
    (models.EncryptRequest, []),
    (models.EncryptRequest, "plaintext"),
    (models.EncryptRequest, {}),
    (models.EncryptRequest, {"plaintext": None}),
    (models.EncryptRequest, {"plaintext": 5}),
    (models.EncryptRequest, {"plaintext": "***"}),
    (models.EncryptRequest, {"plaintext": "YQ"}),
    (models.EncryptRequest, {"plaintext": "YQ==YQ=="}),
    (models.EncryptRequest, {"plaintext": "a-b_"}),
    (models.EncryptRequest, {"plaintext": _LONG_PLAINTEXT}),
    (models.EncryptRequest, {"plaintext": "YWJj", "extra": 1}),
    (models.EncryptRequest, {"plaintext": "YWJj", "encryptionContext": []}),
    (models.EncryptRequest, {"plaintext": "YWJj", "encryptionContext": {"t": 1}}),
    (models.EncryptRequest, {"plaintext": "YWJj", "encryptionContext": {"t": None}}),
    (
        models.EncryptRequest,
        {"plaintext": "YWJj", "encryptionContext": {str(n): "v" for n in range(65)}},
    ),
    (models.GenerateDataKeyRequest, {"keySpec": "AES_512"}),
    (models.GenerateDataKeyRequest, {"keySpec": 256}),
    (models.GenerateDataKeyRequest, {"numberOfBytes": 0}),
    (models.GenerateDataKeyRequest, {"numberOfBytes": 1025}),
    (models.GenerateDataKeyRequest, {"numberOfBytes": True}),
    (models.GenerateDataKeyRequest, {"numberOfBytes": "8"}),
    (models.GenerateDataKeyRequest, {"numberOfBytes": 16, "keySpec": "AES_128"}),
    (models.GenerateDataKeyRequest, {"withoutPlaintext": "yes"}),
    (models.GenerateDataKeyRequest, {"withoutPlaintext": 1}),
    (models.DecryptRequest, {}),
    (models.DecryptRequest, {"ciphertextBlob": "YWJj", "context": {}}),
    (models.DecryptRequest, {"ciphertextBlob": b64(bytes(models.MAX_BLOB + 3))}),
    (models.ReEncryptRequest, {"ciphertextBlob": "YWJj"}),
    (models.ReEncryptRequest, {"ciphertextBlob": "YWJj", "destination": "x"}),
    (models.ReEncryptRequest, {"ciphertextBlob": "YWJj", "destination": {"namespace": "a"}}),
    (
        models.ReEncryptRequest,
        {"ciphertextBlob": "YWJj", "destination": {"namespace": "a", "key": ""}},
    ),
    (
        models.ReEncryptRequest,
        {"ciphertextBlob": "YWJj", "destination": {"namespace": "a", "key": "b", "x": 1}},
    ),
    (
        models.ReEncryptRequest,
        {"destination": {"namespace": "a", "key": "b"}, "sourceEncryptionContext": {"k": 2}},
    ),
    (models.RandomRequest, {}),
    (models.RandomRequest, {"numberOfBytes": 2000}),
    (models.RandomRequest, {"numberOfBytes": -1}),
    (models.RandomRequest, {"numberOfBytes": [8]}),
]
#: Bodies on the edge that both accept: null counts as absent, bounds are inclusive.
GOOD_BODIES: list[tuple[type[Request], Any]] = [
    (models.EncryptRequest, {"plaintext": "", "encryptionContext": None}),
    (models.EncryptRequest, {"plaintext": b64(bytes(models.MAX_PLAINTEXT))}),
    (models.EncryptRequest, {"plaintext": "YR==", "encryptionContext": {}}),
    (models.GenerateDataKeyRequest, {"keySpec": None, "numberOfBytes": 1024}),
    (models.GenerateDataKeyRequest, {"keySpec": "AES_256", "numberOfBytes": None}),
    (models.GenerateDataKeyRequest, {"withoutPlaintext": None}),
    (models.RandomRequest, {"numberOfBytes": 1}),
    (
        models.ReEncryptRequest,
        {"ciphertextBlob": "", "destination": {"namespace": "a", "key": "alias/b"}},
    ),
]


def _name(case: tuple[type[Request], Any]) -> str:
    return f"{case[0].__name__}:{json.dumps(case[1])[:60]}"


@pytest.mark.parametrize("case", BAD_BODIES, ids=[_name(c) for c in BAD_BODIES])
def test_the_schema_and_the_model_refuse_each_bad_body(case: tuple[type[Request], Any]) -> None:
    body, value = case
    assert not component(body.__name__).is_valid(value)
    with pytest.raises(InvalidRequest):
        body.parse(json.dumps(value).encode())


@pytest.mark.parametrize("case", GOOD_BODIES, ids=[_name(c) for c in GOOD_BODIES])
def test_the_schema_and_the_model_accept_each_edge_body(case: tuple[type[Request], Any]) -> None:
    body, value = case
    component(body.__name__).validate(value)
    body.parse(json.dumps(value).encode())


JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 2000)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "YWJj", "YQ==", "YQ", "AES_128", "AES_256", "a/b", "***"])
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


def _values_for(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Any JSON value; for a nested body, also objects of its own field names."""
    ref = schema.get("$ref", "")
    if not ref:
        return JSON_VALUES
    names = [*SCHEMAS[ref.rsplit("/", 1)[-1]]["properties"], "extra"]
    return JSON_VALUES | st.dictionaries(st.sampled_from(names), JSON_VALUES, max_size=3)


#: Per request body: its examples, and per field (and one it does not declare) the values.
MUTATIONS = {
    body: st.tuples(
        st.sampled_from(body.EXAMPLES),
        st.one_of(
            *(
                st.tuples(st.just(name), _values_for(schema))
                for name, schema in SCHEMAS[body.__name__]["properties"].items()
            ),
            st.tuples(st.just("extra"), JSON_VALUES),
        ),
    )
    for body in REQUESTS
}


@pytest.mark.parametrize("body", REQUESTS, ids=[b.__name__ for b in REQUESTS])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_whatever_the_schema_refuses_in_a_field_the_model_refuses(
    body: type[Request], data: st.DataObject
) -> None:
    """One field of a valid example replaced by any JSON value (or one field more)."""
    example, (name, field_value) = data.draw(MUTATIONS[body])
    value = {**example, name: field_value}
    if not component(body.__name__).is_valid(value):
        with pytest.raises(InvalidRequest):
            body.parse(json.dumps(value).encode())

"""GetParametersForImport, ImportKeyMaterial, DeleteImportedKeyMaterial: on KeyMaterialImports.

What a ``kubectl`` user does to import material, with the verbs that user needs on
``keymaterialimports`` in the key's namespace, checked before any write:

* GetParametersForImport creates a KeyMaterialImport for the key (``create``) and answers
  the wrapping public key and import token the operator publishes in its status (``get``);
* ImportKeyMaterial finds the key's KeyMaterialImport whose ``status.importToken`` is the
  token, hands the wrapped material over inline (``spec.importToken``,
  ``spec.encryptedKeyMaterial``, ``spec.validTo``: ``patch``) and answers the import's outcome
  (``get``): Imported, or AWS's exception for the refusal;
* DeleteImportedKeyMaterial deletes the key's KeyMaterialImports that hold its material
  (``delete`` on each); the operator deletes the material, the key is PendingImport.

The key is found by its identifier without a verb on its CustomerMasterKey (a ``kubectl`` user
needs none to import): the verbs above are asked first, on the whole namespace when the key
or the import is unknown, so a caller without them learns nothing of what exists.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from kms_operator.contract import (
    API_VERSION,
    KMI_KIND,
    KMI_PLURAL,
    VERB_CREATE,
    VERB_DELETE,
    VERB_GET,
    VERB_PATCH,
)
from kms_operator.crypto.wrapping import WrappingAlgorithm, WrappingKeySpec
from kms_operator.errors import (
    DefaultKeyProtected,
    ExpiredImportToken,
    IncorrectKeyMaterial,
    InvalidImportToken,
    InvalidRequest,
    KeyPendingDeletion,
    KeyStateError,
    KmsError,
    NotFound,
)
from kms_operator.keys.rules import refuse_state
from kms_operator.serving.audit import bounded
from kms_operator.store.records import KeyRecord, KeyState, Origin, VersionState
from kms_operator.timestamps import parse_rfc3339, rfc3339

from .calls import AwsCall, Members
from .resources import Body, KeyObjects, LifecycleOperation
from .wire import UnsupportedOperation, epoch

EXPIRES = "KEY_MATERIAL_EXPIRES"
DOES_NOT_EXPIRE = "KEY_MATERIAL_DOES_NOT_EXPIRE"
#: ``spec.encryptedKeyMaterial`` holds at most 4096 base64 characters.
MAX_WRAPPED_BYTES = 3072
#: ``spec.importToken`` holds at most 8192 characters.
MAX_TOKEN_BYTES = 8192
MAX_OBJECT_NAME = 253

# ``status.phase`` of a KeyMaterialImport (the CRD's enum).
WAITING = "WaitingForMaterial"
IMPORTED = "Imported"
EXPIRED = "Expired"
FAILED = "Failed"
#: What the operator publishes in ``status`` when it issued the import parameters.
ISSUED_FIELDS = ("importToken", "wrappingPublicKey", "parametersExpireAt")
#: The reason of an import whose parameters expired before the material came.
PARAMETERS_EXPIRED = "ImportParametersExpired"

#: ``Ready``'s reason on a refused import → the error it is (the reasons are error codes).
_REFUSALS: dict[str, type[KmsError]] = {
    kind.code: kind
    for kind in (
        IncorrectKeyMaterial,
        InvalidImportToken,
        ExpiredImportToken,
        InvalidRequest,
        KeyPendingDeletion,
        DefaultKeyProtected,
    )
}
_REFUSALS[PARAMETERS_EXPIRED] = ExpiredImportToken


def _one_of(aws: AwsCall, member: str, supported: tuple[str, ...]) -> str:
    value = aws.fields.required_string(member, max_chars=64)
    if value not in supported:
        raise UnsupportedOperation(
            f"{member} {value!r} is not supported here; supported: {', '.join(supported)}"
        )
    return value


async def _allow(aws: AwsCall, verb: str, namespace: str, name: str | None) -> None:
    await aws.call.state.authorizer.authorize(aws.user, verb, namespace, name, KMI_PLURAL)


async def _key(aws: AwsCall, verb: str) -> KeyRecord:
    """The key ``KeyId`` names; an unknown one is ``NotFound`` once ``verb`` on the
    namespace's KeyMaterialImports is allowed (so the answer tells nothing to others)."""
    name = aws.name_of()
    audit = aws.call.audit
    audit.namespace, audit.key_name = bounded(name.namespace), bounded(name.reference)
    try:
        record = aws.call.service.resolve(name.namespace, name.reference)
        if record.state is KeyState.DESTROYED:
            raise NotFound(f"key {record.key_id} was destroyed")
    except NotFound:
        await _allow(aws, verb, name.namespace, None)
        raise
    aws.call.note_key(record)
    return record


def _status(body: Body) -> dict[str, Any]:
    return dict(body.get("status") or {})


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    for condition in status.get("conditions") or ():
        if condition.get("type") == "Ready":
            return dict(condition)
    return {}


def _refusal(status: dict[str, Any]) -> KmsError:
    """The error a Failed or Expired import stands for."""
    ready = _ready(status)
    message = str(ready.get("message") or "the import was refused")
    if status.get("phase") == EXPIRED:
        return ExpiredImportToken(message)
    kind = _REFUSALS.get(str(ready.get("reason")))
    return kind(message) if kind is not None else KeyStateError(message)


def _is_of(body: Body, record: KeyRecord) -> bool:
    """A live KeyMaterialImport of ``record`` (named by keyRef, parameters issued for it)."""
    return (
        not body["metadata"].get("deletionTimestamp")
        and (body.get("spec") or {}).get("keyRef", {}).get("name") == record.name
        and _status(body).get("keyId") == str(record.key_id)
    )


def _import_name(key_name: str) -> str:
    base = key_name[: MAX_OBJECT_NAME - 9].rstrip(".-")
    return f"{base}-{secrets.token_hex(4)}"


def _der(pem: str) -> bytes:
    """The DER bytes of a PEM block (SubjectPublicKeyInfo: AWS's ``PublicKey``)."""
    body = "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))
    return base64.b64decode(body, validate=True)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def get_parameters_for_import(aws: AwsCall, objects: KeyObjects) -> Members:
    algorithm = _one_of(aws, "WrappingAlgorithm", tuple(a.value for a in WrappingAlgorithm))
    key_spec = _one_of(aws, "WrappingKeySpec", tuple(s.value for s in WrappingKeySpec))
    record = await _key(aws, VERB_CREATE)
    namespace = record.namespace
    await _allow(aws, VERB_CREATE, namespace, None)  # a create names no object yet
    if record.origin is not Origin.EXTERNAL:
        raise UnsupportedOperation(
            f"key {record.key_id} has origin AWS_KMS: only keys created with Origin EXTERNAL "
            "take imported material"
        )
    if record.is_default:
        raise DefaultKeyProtected(f"key {record.key_id} is a default key: it takes no import")
    if record.state is KeyState.PENDING_DELETION:
        raise refuse_state(record, "GetParametersForImport")
    name = _import_name(record.name)
    await _allow(aws, VERB_GET, namespace, name)
    body = {
        "apiVersion": API_VERSION,
        "kind": KMI_KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "keyRef": {"name": record.name},
            "wrappingAlgorithm": algorithm,
            "wrappingKeySpec": key_spec,
        },
    }
    created = await objects.run(objects.resources.create_kmi, namespace, body)
    uid = created["metadata"]["uid"]

    async def probe() -> dict[str, Any] | None:
        found = await objects.run(objects.resources.get_kmi, namespace, name)
        if found is None or found["metadata"].get("uid") != uid:
            raise NotFound(f"KeyMaterialImport {namespace}/{name} was deleted meanwhile")
        status = _status(found)
        if status.get("phase") in (FAILED, EXPIRED):
            raise _refusal(status)
        issued = status.get("keyId") == str(record.key_id) and all(
            status.get(field) for field in ISSUED_FIELDS
        )
        return status if issued else None

    what = f"issue import parameters in KeyMaterialImport {namespace}/{name}"
    status = await objects.until(probe, what, reads_objects=True)
    return {
        "KeyId": aws.arns.key(record),
        "ImportToken": _b64(str(status["importToken"]).encode("utf-8")),
        "PublicKey": _b64(_der(str(status["wrappingPublicKey"]))),
        "ParametersValidTo": epoch(parse_rfc3339(str(status["parametersExpireAt"]))),
    }


def _token_text(token: bytes) -> str:
    try:
        return token.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidImportToken("the import token is not one this KMS issued") from None


async def import_key_material(aws: AwsCall, objects: KeyObjects) -> Members:
    fields = aws.fields
    token = _token_text(fields.required_blob("ImportToken", max_bytes=MAX_TOKEN_BYTES))
    material = fields.required_blob("EncryptedKeyMaterial", max_bytes=MAX_WRAPPED_BYTES)
    valid_to = fields.timestamp("ValidTo")
    model = fields.choice(
        "ExpirationModel",
        (EXPIRES, DOES_NOT_EXPIRE),
        default=EXPIRES if valid_to is not None else DOES_NOT_EXPIRE,
    )
    if model == EXPIRES and valid_to is None:
        raise InvalidRequest(f"ExpirationModel {EXPIRES} needs ValidTo", field="ValidTo")
    if model == DOES_NOT_EXPIRE and valid_to is not None:
        raise InvalidRequest(
            f"ValidTo contradicts ExpirationModel {DOES_NOT_EXPIRE}", field="ValidTo"
        )
    record = await _key(aws, VERB_PATCH)
    namespace = record.namespace
    items = await objects.run(objects.resources.list_kmis, namespace)
    found = next(
        (i for i in items if _is_of(i, record) and _status(i).get("importToken") == token), None
    )
    if found is None:
        await _allow(aws, VERB_PATCH, namespace, None)
        raise InvalidImportToken(
            f"the import token is not one issued for key {record.key_id} (by "
            "GetParametersForImport, and still held by its KeyMaterialImport)"
        )
    name = found["metadata"]["name"]
    await _allow(aws, VERB_PATCH, namespace, name)
    await _allow(aws, VERB_GET, namespace, name)
    status = _status(found)
    if status.get("keyVersion") is not None:
        raise InvalidImportToken(
            "this import token was used already: call GetParametersForImport for new ones"
        )
    if status.get("phase") == EXPIRED:
        raise _refusal(status)
    patch = {
        "metadata": {"resourceVersion": found["metadata"]["resourceVersion"]},
        "spec": {
            "importToken": token,
            "encryptedKeyMaterial": _b64(material),
            "validTo": None if valid_to is None else rfc3339(valid_to),
        },
    }
    patched = await objects.run(objects.resources.patch_kmi, namespace, name, patch)
    uid, generation = patched["metadata"]["uid"], patched["metadata"].get("generation")

    async def probe() -> bool | None:
        current = await objects.run(objects.resources.get_kmi, namespace, name)
        if current is None or current["metadata"].get("uid") != uid:
            raise NotFound(f"KeyMaterialImport {namespace}/{name} was deleted meanwhile")
        status = _status(current)
        if generation is not None and status.get("observedGeneration") != generation:
            return None
        if status.get("phase") == IMPORTED:
            return True
        if status.get("phase") in (FAILED, EXPIRED):
            raise _refusal(status)
        return None

    await objects.until(
        probe, f"import the material of KeyMaterialImport {namespace}/{name}", reads_objects=True
    )
    return {}


async def delete_imported_key_material(aws: AwsCall, objects: KeyObjects) -> Members:
    record = await _key(aws, VERB_DELETE)
    namespace = record.namespace
    items = await objects.run(objects.resources.list_kmis, namespace)
    holders = [
        i
        for i in items
        if _is_of(i, record)
        and _status(i).get("phase") == IMPORTED
        and _status(i).get("keyVersion") is not None
    ]
    for holder in holders:
        await _allow(aws, VERB_DELETE, namespace, holder["metadata"]["name"])
    if not holders:
        await _allow(aws, VERB_DELETE, namespace, None)
    if record.origin is not Origin.EXTERNAL:
        raise UnsupportedOperation(
            f"key {record.key_id} has origin AWS_KMS: its material cannot be deleted on its own"
        )
    held = {int(_status(h)["keyVersion"]) for h in holders}
    if not held:
        if any(v.state is VersionState.ENABLED for v in record.versions):
            raise KeyStateError(
                f"no KeyMaterialImport holds the material of key {record.key_id}; delete it "
                "through the KeyMaterialImport that imported it"
            )
        return {}
    for holder in holders:
        meta = holder["metadata"]
        try:
            await objects.run(objects.resources.delete_kmi, namespace, meta["name"], meta["uid"])
        except NotFound:
            continue  # deleted meanwhile: its material goes all the same
    service = aws.call.service

    async def probe() -> bool | None:
        current = service.get(record.key_id)
        gone = all(
            (version := current.version(number)) is None
            or version.state is not VersionState.ENABLED
            for number in held
        )
        return True if gone else None

    await objects.until(probe, f"delete the imported material of key {record.key_id}")
    return {}


OPERATIONS: dict[str, LifecycleOperation] = {
    "GetParametersForImport": get_parameters_for_import,
    "ImportKeyMaterial": import_key_material,
    "DeleteImportedKeyMaterial": delete_imported_key_material,
}

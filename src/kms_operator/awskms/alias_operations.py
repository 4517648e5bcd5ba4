"""CreateAlias, UpdateAlias, DeleteAlias: ``spec.aliases`` of the CustomerMasterKeys touched.

Each needs ``patch`` on every object it changes. An alias is unique in its namespace: one that
is taken is ``AlreadyExistsException``; UpdateAlias takes the alias from its old key first,
then gives it to the new one. Default keys keep their ``alias/kms/…`` alias.
"""

from __future__ import annotations

from collections.abc import Callable

from kms_operator.contract import VERB_PATCH
from kms_operator.errors import (
    AliasConflict,
    DefaultKeyProtected,
    InvalidRequest,
    NotFound,
)
from kms_operator.keys.rules import (
    ALIAS_PREFIX,
    DEFAULT_ALIAS_PREFIX,
    validate_alias,
)
from kms_operator.keys.service import KeyService
from kms_operator.store.records import KeyRecord

from .calls import AwsCall, Members
from .cmk_objects import (
    patch_object,
    refuse_pending_deletion,
    spec_of,
)
from .identifiers import KeyName
from .resources import Body, KeyObjects, LifecycleOperation
from .wire import AwsError

#: Aliases the CustomerMasterKey schema forbids (AWS's own keys).
AWS_ALIAS_PREFIX = "alias/aws/"


class InvalidAliasName(AwsError):
    shape = "InvalidAliasNameException"


def _alias_name(aws: AwsCall, namespace: str | None) -> KeyName:
    """``AliasName`` (``alias/…``, or an alias ARN), in ``namespace`` (the target key's) when
    given, else in its ARN's or the caller's namespace."""
    text = aws.fields.required_string("AliasName", max_chars=2048)
    if text.startswith("arn:"):
        name = aws.arns.parse(text, aws.user, member="AliasName")
        if namespace is not None and name.namespace != namespace:
            raise InvalidRequest(
                "the AliasName ARN's region (its namespace) is not the target key's namespace",
                field="AliasName",
            )
    else:
        name = KeyName(namespace or aws.caller_namespace(), text)
    if not name.reference.startswith(ALIAS_PREFIX):
        raise InvalidAliasName("AliasName must look like alias/<name>")
    return name


def _check_new_alias(alias: str, target: KeyRecord) -> None:
    """The rules the domain applies to an alias a key takes (its spelling is AWS's
    InvalidAliasNameException; the domain's reserved ``alias/kms/…`` its own refusal)."""
    try:
        validate_alias(alias)
    except InvalidRequest as exc:
        raise InvalidAliasName(exc.message) from None
    if alias.startswith(AWS_ALIAS_PREFIX):
        raise InvalidAliasName(f"alias {alias!r} is reserved: {AWS_ALIAS_PREFIX}… names AWS's keys")
    if alias.startswith(DEFAULT_ALIAS_PREFIX) and not target.is_default:
        raise InvalidRequest(
            f"alias {alias!r} is reserved: {DEFAULT_ALIAS_PREFIX}… names default keys",
            field="aliases",
        )


def _owner(service: KeyService, namespace: str, alias: str) -> KeyRecord | None:
    try:
        return service.resolve(namespace, alias)
    except NotFound:
        return None


def _aliases_patch(body: Body, wanted: Callable[[set[str]], set[str]]) -> Body | None:
    aliases = set(spec_of(body).get("aliases") or ())
    changed = wanted(set(aliases))
    return None if changed == aliases else {"spec": {"aliases": sorted(changed)}}


async def _add_alias(aws: AwsCall, objects: KeyObjects, record: KeyRecord, alias: str) -> None:
    await patch_object(objects, record, lambda body: _aliases_patch(body, lambda a: a | {alias}))
    service = aws.call.service

    async def probe() -> KeyRecord | None:
        owner = _owner(service, record.namespace, alias)
        return owner if owner is not None and owner.key_id == record.key_id else None

    await objects.until(probe, f"give alias {alias} to key {record.key_id}")


async def _remove_alias(aws: AwsCall, objects: KeyObjects, record: KeyRecord, alias: str) -> None:
    await patch_object(objects, record, lambda body: _aliases_patch(body, lambda a: a - {alias}))
    service = aws.call.service

    async def probe() -> bool | None:
        owner = _owner(service, record.namespace, alias)
        return True if owner is None or owner.key_id != record.key_id else None

    await objects.until(probe, f"take alias {alias} from key {record.key_id}")


def _refuse_losing(record: KeyRecord, alias: str) -> None:
    if record.is_default and alias.startswith(DEFAULT_ALIAS_PREFIX):
        raise DefaultKeyProtected(
            f"key {record.namespace}/{record.name} is a default key: its "
            f"{DEFAULT_ALIAS_PREFIX}… alias cannot be removed"
        )


async def create_alias(aws: AwsCall, objects: KeyObjects) -> Members:
    target = await aws.key(VERB_PATCH, "TargetKeyId")
    alias = _alias_name(aws, target.namespace).reference
    _check_new_alias(alias, target)
    refuse_pending_deletion(target, "CreateAlias")
    if _owner(aws.call.service, target.namespace, alias) is not None:
        raise AliasConflict(f"alias {alias!r} exists already in namespace {target.namespace!r}")
    await _add_alias(aws, objects, target, alias)
    return {}


async def update_alias(aws: AwsCall, objects: KeyObjects) -> Members:
    namespace = aws.name_of("TargetKeyId").namespace
    alias = _alias_name(aws, namespace)
    owner = await aws.call.resolve(VERB_PATCH, alias.namespace, alias.reference)
    aws.call.note_source(owner, owner.current_version)
    target = await aws.key(VERB_PATCH, "TargetKeyId")
    if owner.key_id == target.key_id:
        return {}
    _check_new_alias(alias.reference, target)
    _refuse_losing(owner, alias.reference)
    refuse_pending_deletion(owner, "UpdateAlias")
    refuse_pending_deletion(target, "UpdateAlias")
    # One alias names one key: the old key lets it go before the new one takes it.
    await _remove_alias(aws, objects, owner, alias.reference)
    await _add_alias(aws, objects, target, alias.reference)
    return {}


async def delete_alias(aws: AwsCall, objects: KeyObjects) -> Members:
    alias = _alias_name(aws, None)
    owner = await aws.call.resolve(VERB_PATCH, alias.namespace, alias.reference)
    _refuse_losing(owner, alias.reference)
    refuse_pending_deletion(owner, "DeleteAlias")
    await _remove_alias(aws, objects, owner, alias.reference)
    return {}


OPERATIONS: dict[str, LifecycleOperation] = {
    "CreateAlias": create_alias,
    "UpdateAlias": update_alias,
    "DeleteAlias": delete_alias,
}

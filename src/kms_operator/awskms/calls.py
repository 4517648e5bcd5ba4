"""One AWS call: the request's members, the caller, and the key its identifier names.

Operations are coroutines taking an :class:`AwsCall` and returning the answer's members; the
listener's :func:`kms_operator.serving.calls.run` authenticates, audits and measures them as it
does native calls, in the AWS wire format (:data:`.wire.AWS`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from kms_operator.errors import NotFound
from kms_operator.kube.reviews import UserInfo
from kms_operator.serving.calls import Call
from kms_operator.store.records import KeyRecord, KeyState

from .identifiers import Arns, KeyName, caller_namespace
from .wire import Fields

#: The answer of an operation: its members (blobs already base64 text).
Members = dict[str, Any]


class AwsCall:
    """What an operation may do: read members, find keys with the caller's rights, name ARNs."""

    __slots__ = ("arns", "call", "fields")

    def __init__(self, call: Call, fields: Fields, arns: Arns) -> None:
        self.call = call
        self.fields = fields
        self.arns = arns

    @property
    def user(self) -> UserInfo:
        assert self.call.user is not None, "authenticated before the operation runs"
        return self.call.user

    def caller_namespace(self) -> str:
        return caller_namespace(self.user)

    def name_of(self, member: str = "KeyId") -> KeyName:
        identifier = self.fields.required_string(member, max_chars=2048)
        return self.arns.parse(identifier, self.user, member=member)

    async def key(self, verb: str, member: str = "KeyId") -> KeyRecord:
        """The key the member names, once the caller holds ``verb`` on it.

        A destroyed key is gone, as in AWS: ``NotFound`` (authorized first, like any other
        unknown name, so a caller without the verb learns nothing).
        """
        name = self.name_of(member)
        record = await self.call.resolve(verb, name.namespace, name.reference)
        if record.state is KeyState.DESTROYED:
            raise NotFound(f"key {record.key_id} was destroyed")
        return record


Operation = Callable[[AwsCall], Awaitable[Members]]

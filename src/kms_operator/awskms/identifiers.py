"""Key identifiers of the AWS protocol, and where a key's namespace comes from.

``KeyId`` may be, as in AWS, a key id, a key ARN, an alias name or an alias ARN:

* ``1234abcd-12ab-34cd-56ef-1234567890ab`` and ``alias/payments``: in the caller's namespace
  (the namespace of its ServiceAccount);
* ``arn:aws:kms:<namespace>:<account>:key/<key id>`` and
  ``arn:aws:kms:<namespace>:<account>:alias/<name>``: in ``<namespace>``.

The namespace is the ARN's **region**: SOPS and the AWS Encryption SDK take the region out of a
key ARN to make their client, a namespace is a valid region name (a DNS label), and like a
region it scopes key ids and alias names. The account is the twelve digits this KMS was given
(``--aws-account-id``, ``000000000000`` unless set); an ARN of another account names no key here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kms_operator.errors import InvalidRequest, NotFound
from kms_operator.keys.rules import ALIAS_PREFIX, KEY_ID_PATTERN
from kms_operator.kube.reviews import UserInfo
from kms_operator.store.records import KeyRecord

DEFAULT_ACCOUNT_ID = "000000000000"
ACCOUNT_ID_PATTERN = re.compile(r"[0-9]{12}")
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"

_ARN = re.compile(r"arn:aws:kms:(?P<region>[^:]*):(?P<account>[^:]*):(?P<resource>.+)")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class KeyName:
    """What a ``KeyId`` names: a key id or ``alias/…`` reference, in a namespace."""

    namespace: str
    reference: str


def caller_namespace(user: UserInfo) -> str:
    """The namespace of the caller's ServiceAccount: where an identifier without one points."""
    if user.username.startswith(SERVICE_ACCOUNT_PREFIX):
        namespace = user.username[len(SERVICE_ACCOUNT_PREFIX) :].split(":", 1)[0]
        if namespace:
            return namespace
    raise InvalidRequest(
        f"caller {user.username!r} is not a ServiceAccount: name the key by its ARN "
        "(arn:aws:kms:<namespace>:<account>:key/<key id>), whose region is the namespace",
        field="KeyId",
    )


class Arns:
    """Makes and reads the ARNs of one account."""

    __slots__ = ("account",)

    def __init__(self, account: str = DEFAULT_ACCOUNT_ID) -> None:
        if not ACCOUNT_ID_PATTERN.fullmatch(account):
            raise ValueError(f"an AWS account id has twelve digits, not {account!r}")
        self.account = account

    def key(self, record: KeyRecord) -> str:
        return f"arn:aws:kms:{record.namespace}:{self.account}:key/{record.key_id}"

    def alias(self, namespace: str, alias: str) -> str:
        return f"arn:aws:kms:{namespace}:{self.account}:{alias}"

    def parse(self, identifier: str, user: UserInfo, *, member: str = "KeyId") -> KeyName:
        """The key ``identifier`` names; one that cannot name a key here is ``NotFound``."""
        match = _ARN.fullmatch(identifier)
        if match is None:
            if identifier.startswith("arn:"):
                raise NotFound(f"{member} {identifier!r} is not a KMS key or alias ARN")
            namespace, reference = caller_namespace(user), identifier
        else:
            namespace, reference = match["region"], match["resource"]
            if not _NAMESPACE.fullmatch(namespace):
                raise NotFound(f"the region of {member} {identifier!r} is not a namespace")
            if match["account"] != self.account:
                raise NotFound(
                    f"{member} {identifier!r} is of account {match['account']!r}; "
                    f"the keys here are of account {self.account!r}"
                )
            if reference.startswith("key/"):
                reference = reference[len("key/") :]
            elif not reference.startswith(ALIAS_PREFIX):
                raise NotFound(f"{member} {identifier!r} names neither a key nor an alias")
        if not (reference.startswith(ALIAS_PREFIX) or KEY_ID_PATTERN.fullmatch(reference)):
            raise NotFound(
                f"{member} {identifier!r} is not a key id, key ARN, alias name or alias ARN"
            )
        return KeyName(namespace, reference)

"""The operator's own audit lines: one per data key generated, decrypted or re-encrypted.

The API's JSON format (:mod:`kms_operator.serving.audit`), caller :data:`OPERATOR_CALLER`, plus
``dataKey`` naming the DataKey served. The line is written before the result is used and the
audit is fail-closed: if the line cannot be written, the result is dropped
(:class:`AuditNotWritten`) and no Secret is written.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from kms_operator.errors import KmsError
from kms_operator.keys.service import DataKeyResult, DecryptResult, ReEncryptResult
from kms_operator.serving.audit import AuditRecord, AuditSink
from kms_operator.store.records import KeyRecord

from .views import DataKeyView

log = logging.getLogger(__name__)

#: The ``caller`` of the operator's own audit lines.
OPERATOR_CALLER = "system:kms-operator"

_AUDIT_PREFIX = f"dk-{os.urandom(4).hex()}"
_audit_numbers = itertools.count(1)
#: What an audited operation returns.
AuditedResult = TypeVar("AuditedResult", DataKeyResult, DecryptResult, ReEncryptResult)


@dataclass(slots=True)
class DataKeyAuditRecord(AuditRecord):
    """An API audit line plus ``dataKey``: the ``namespace/name`` of the DataKey served."""

    data_key: str | None = None

    def to_json(self, now: float | None = None) -> str:
        line = AuditRecord.to_json(self, now)
        return f'{line[:-1]},"dataKey":{json.dumps(self.data_key)}}}'


class AuditNotWritten(Exception):
    """The audit line of an operation could not be written: its result must not be used."""


def audited(
    sink: AuditSink,
    view: DataKeyView,
    operation: str,
    key: KeyRecord | None,
    call: Callable[[], AuditedResult],
    *,
    source: KeyRecord | None = None,
) -> AuditedResult:
    """Run one key service operation for ``view`` and write its audit line, allowed or not.

    Raises :class:`AuditNotWritten` when the line cannot be written (the result is dropped),
    else returns the result or re-raises the service's refusal.
    """
    entry = DataKeyAuditRecord(
        operation,
        f"{_AUDIT_PREFIX}-{next(_audit_numbers)}",
        caller=OPERATOR_CALLER,
        namespace=view.namespace,
        data_key=f"{view.namespace}/{view.name}",
    )
    if key is not None:
        entry.key_name, entry.key_id = key.name, str(key.key_id)
    if source is not None:
        entry.source_namespace, entry.source_key_name = source.namespace, source.name
        entry.source_key_id = str(source.key_id)
    try:
        result = call()
    except KmsError as exc:
        entry.outcome, entry.error_code = "error", exc.code
        _write(sink, entry)
        raise
    entry.outcome = "allowed"
    entry.key_id, entry.key_version = str(result.key_id), result.key_version
    if isinstance(result, ReEncryptResult):
        entry.source_key_id = str(result.source_key_id)
        entry.source_key_version = result.source_key_version
    _write(sink, entry)
    return result


def _write(sink: AuditSink, entry: DataKeyAuditRecord) -> None:
    try:
        sink.write(entry)
    except Exception as exc:
        log.error(
            "the audit line of %s for DataKey %s could not be written (%s): its result is not used",
            entry.operation,
            entry.data_key,
            type(exc).__name__,
        )
        raise AuditNotWritten(
            f"the audit line of {entry.operation} could not be written, so its result was "
            "not used (the audit is fail-closed); retrying"
        ) from None

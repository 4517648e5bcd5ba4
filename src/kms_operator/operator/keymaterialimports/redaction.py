"""Wrapped material inline in the spec, kept out of Kopf's DEBUG lines.

Kopf logs whole bodies, diffs and patches at DEBUG (``kopf.objects``): with
``spec.encryptedKeyMaterial`` set, those lines would carry the wrapped material. Importing
this module installs :class:`RedactInlineMaterial` on that logger.
"""

from __future__ import annotations

import logging
import re

#: Where the wrapped material sits in a line Kopf logs (a body, a diff, a patch, the diff-base
#: annotation's JSON), and the quoted base64 runs to take out of such a line.
_INLINE_FIELD = re.compile(r"encryptedKeyMaterial\\?['\"]")
_BASE64_RUN = re.compile(r"(\\?['\"])[A-Za-z0-9+/]{16,}={0,2}\1(?!\s*:)")  # values, not keys


class RedactInlineMaterial(logging.Filter):
    """Replaces the quoted base64 in log lines that show ``spec.encryptedKeyMaterial``.

    Wrapped material is only readable by the store, but it stays out of logs like everything
    handed over for an import.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _INLINE_FIELD.search(message):
            record.msg, record.args = _BASE64_RUN.sub(r"\1<redacted>\1", message), ()
        return True


_REDACTION = RedactInlineMaterial()
logging.getLogger("kopf.objects").addFilter(_REDACTION)

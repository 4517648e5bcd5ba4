"""The key service: one method per verb of DESIGN.md section 2, over one ``KeyStore``.

It is the only writer of the store in its process, so it keeps every key's record (never its
material) and the unwrapped version keys in memory, in a
:class:`~kms_operator.keys.index.KeyIndex`: encrypt and decrypt touch no disk and take no lock.
Each verb, holding the index's writer lock (in a thread), computes the next record, writes it
in one store transaction, then publishes it to the index; a crash between the two loses nothing
because the index is rebuilt from the store. Where another process writes the same store (the
KMS v2 plugin's ``keys`` commands beside ``kms-plugin serve``), ``refresh()`` catches up.

:class:`KeyService` is the one entry for every front end. Its verbs are written in the modules
of their concern, each a mixin over :class:`~kms_operator.keys.base.ServiceBase` (the store,
the index, the clocks and the shared writing steps):

* :mod:`.lifecycle`: create, apply a spec, schedule and cancel a deletion;
* :mod:`.timers`: what time alone changes (destruction, automatic rotation, expiry);
* :mod:`.binding`: which key an object holds, namespaces created again;
* :mod:`.importing`: wrapping parameters and imported material;
* :mod:`.encryption`: encrypt, decrypt, data keys, re-encrypt, random bytes.

Mixins rather than collaborators: every verb takes the same writer lock, reads the same index
and writes through the same ``_save``, so they are facets of one object; separate objects
would either repeat each verb's signature to delegate to it, or make every caller name the
part (``service.crypto.encrypt``). The names the edges import from here (limits, results,
:func:`refuse_state`) are re-exported, so this module stays their one address.
"""

from __future__ import annotations

from .binding import BindingVerbs
from .encryption import (
    DataKeyResult,
    DecryptResult,
    EncryptionVerbs,
    EncryptResult,
    ReEncryptResult,
)
from .importing import ImportingVerbs
from .lifecycle import KeySettings, LifecycleVerbs, SpecResult
from .rules import (
    ALIAS_PREFIX,
    DATA_KEY_SPECS,
    DEFAULT_ALIAS_PREFIX,
    DEFAULT_PENDING_WINDOW_DAYS,
    MATERIAL_SIZE,
    MAX_PLAINTEXT,
    RANDOM_BYTES,
    refuse_state,
)
from .timers import Timer, TimerVerbs

__all__ = [
    "ALIAS_PREFIX",
    "DATA_KEY_SPECS",
    "DEFAULT_ALIAS_PREFIX",
    "DEFAULT_PENDING_WINDOW_DAYS",
    "MATERIAL_SIZE",
    "MAX_PLAINTEXT",
    "RANDOM_BYTES",
    "DataKeyResult",
    "DecryptResult",
    "EncryptResult",
    "KeyService",
    "KeySettings",
    "ReEncryptResult",
    "SpecResult",
    "Timer",
    "refuse_state",
]


class KeyService(LifecycleVerbs, TimerVerbs, BindingVerbs, ImportingVerbs, EncryptionVerbs):
    """The KMS: every lifecycle verb and every crypto operation, over one ``KeyStore``."""

"""The rules every verb checks: names, limits, and the refusals that name a key's state.

Pure functions and constants (DESIGN.md section 2): the verbs of
:class:`~kms_operator.keys.service.KeyService` call them; so do the edges that show a limit
(the API's models, the operator's spec parsing), so that each limit is written once.
"""

from __future__ import annotations

import re

from kms_operator.crypto import blob as blobs
from kms_operator.errors import (
    InvalidRequest,
    KeyDisabled,
    KeyPendingDeletion,
    KeyPendingImport,
    KeyStateError,
)
from kms_operator.store.records import KeyRecord, KeyState, Origin

ALIAS_PREFIX = "alias/"
DEFAULT_ALIAS_PREFIX = "alias/kms/"
_ALIAS_PATTERN = re.compile(r"^alias/[a-zA-Z0-9/_-]{1,250}$")
#: The one spelling of a key id: lower-case, hyphenated (``str(uuid.UUID(...))``). Braces,
#: ``urn:uuid:`` prefixes, upper case or missing dashes name no key.
KEY_ID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_PLAINTEXT = blobs.MAX_PLAINTEXT
MATERIAL_SIZE = 32
PENDING_WINDOW_DAYS = (7, 30)
DEFAULT_PENDING_WINDOW_DAYS = 30
ROTATION_PERIOD_DAYS = (90, 2560)
RANDOM_BYTES = (1, 1024)
IMPORT_PARAMETERS_VALID_DAYS = 1
MAX_MATERIAL_VALIDITY_DAYS = 365
DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16}


def validate_alias(alias: str) -> None:
    if not _ALIAS_PATTERN.match(alias):
        raise InvalidRequest(
            f"alias {alias!r} must look like alias/<name> with letters, digits, '/', '_' or '-'",
            field="aliases",
        )


def refuse_state(record: KeyRecord, operation: str) -> KeyStateError:
    """The error for using a key in a state other than Enabled; it names the state."""
    state = record.state
    message = (
        f"key {record.namespace}/{record.name} ({record.key_id}) is {state}: {operation} refused"
    )
    if state is KeyState.DISABLED:
        return KeyDisabled(message)
    if state is KeyState.PENDING_IMPORT:
        return KeyPendingImport(message)
    if state is KeyState.PENDING_DELETION:
        return KeyPendingDeletion(f"{message}; deletion is scheduled for {record.deletion_date}")
    return KeyStateError(message)


def _check_within(field: str, value: int, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if not low <= value <= high:
        raise InvalidRequest(f"{field} must be between {low} and {high}, got {value}", field=field)
    return value


def check_rotation_period(origin: Origin, days: int) -> None:
    if origin is Origin.EXTERNAL:
        raise InvalidRequest(
            "EXTERNAL keys rotate only by importing new material: rotation.periodDays "
            "is not allowed",
            field="rotation.periodDays",
        )
    _check_within("rotation.periodDays", days, ROTATION_PERIOD_DAYS)


def check_pending_window(days: int) -> None:
    _check_within("pendingWindowDays", days, PENDING_WINDOW_DAYS)


def check_number_of_bytes(number_of_bytes: int) -> int:
    return _check_within("numberOfBytes", number_of_bytes, RANDOM_BYTES)


def data_key_size(key_spec: str | None, number_of_bytes: int | None) -> int:
    if key_spec is not None and number_of_bytes is not None:
        raise InvalidRequest("give keySpec or numberOfBytes, not both", field="numberOfBytes")
    if number_of_bytes is not None:
        return check_number_of_bytes(number_of_bytes)
    spec = key_spec or "AES_256"
    if spec not in DATA_KEY_SPECS:
        raise InvalidRequest(f"keySpec must be one of {', '.join(DATA_KEY_SPECS)}", field="keySpec")
    return DATA_KEY_SPECS[spec]

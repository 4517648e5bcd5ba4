"""A default key goes with its namespace (issue 8, item 1).

Outside a namespace deletion a default key cannot be deleted (the operator recreates its
object); in a namespace being deleted it is scheduled like any other key, so the next namespace
of that name never finds it.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.support.changes import fire
from tests.support.clocks import ManualClock

from kms_operator.errors import DefaultKeyProtected, InvalidRequest, KeyStateError
from kms_operator.keys.service import KeyService, Timer
from kms_operator.store.records import KeyState

pytestmark = pytest.mark.unit


def test_default_key_deletion_refused_unless_the_namespace_terminates(
    service: KeyService, clock: ManualClock
) -> None:
    key = service.create_key(
        "team-a",
        "kms-default-datakeys",
        aliases=("alias/kms/datakeys",),
        default_service="datakeys",
        namespace_uid="ns-1",
        object_uid="obj-1",
    )
    with pytest.raises(DefaultKeyProtected):
        service.schedule_deletion(key.key_id, 7)
    assert service.get(key.key_id).state is KeyState.ENABLED

    pending = service.schedule_deletion(key.key_id, 7, namespace_terminating=True)
    assert pending.state is KeyState.PENDING_DELETION
    assert pending.deletion_date == clock.now() + timedelta(days=7)
    with pytest.raises(KeyStateError):
        service.encrypt("team-a", "alias/kms/datakeys", b"x")
    clock.advance(timedelta(days=7))
    destroyed = fire(service, key.key_id, Timer.DESTRUCTION)
    assert destroyed is not None and destroyed.state is KeyState.DESTROYED


def test_namespace_terminating_changes_nothing_for_a_user_key(
    service: KeyService, clock: ManualClock
) -> None:
    key = service.create_key("team-a", "orders")
    with pytest.raises(InvalidRequest, match="pendingWindowDays"):
        service.schedule_deletion(key.key_id, 3, namespace_terminating=True)
    first = service.schedule_deletion(key.key_id, 10, namespace_terminating=True)
    assert first.deletion_date == clock.now() + timedelta(days=10)
    # The date is fixed at the first request.
    assert service.schedule_deletion(key.key_id, 30).deletion_date == first.deletion_date

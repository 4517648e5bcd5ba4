"""The ``CustomerMasterKey`` kind: thin Kopf handlers over pure decisions.

* :mod:`.handlers`: Kopf's entry points (importing this package registers them);
* :mod:`.specs`: the spec parsed, and what applying it shows (Synced, Events);
* :mod:`.binding`: which key an object holds, its claim, why a binding is refused;
* :mod:`.aliases`: alias conflicts, shown on both sides;
* :mod:`.deletion` (decisions) and :mod:`.deleting` (carrying them out, with retries):
  scheduled deletion, cancellation, objects created again;
* :mod:`.admission`: the optional validating webhook;
* :mod:`.drift`: keys without their object, reported at start-up and when found.

The operator's composition root uses the three names below.
"""

from __future__ import annotations

from . import handlers as handlers
from .admission import configure_webhooks, register_admission
from .drift import report_keys_without_objects

__all__ = ["configure_webhooks", "register_admission", "report_keys_without_objects"]

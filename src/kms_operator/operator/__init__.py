"""The Kopf operator: handlers that translate custom resources into KeyService calls.

The only package that imports ``kopf``. One package per custom resource kind, each split into
thin Kopf handlers (``handlers.py``) and pure decisions next to the reason constants they use;
what every kind shares is in :mod:`.outcomes` (Outcome, the domain-error mapping, the one Event
rule) and :mod:`.conditions`. Decisions and handler translation are tested without a cluster.
"""

"""The Kopf operator: handlers that translate custom resources into KeyService calls.

The only package that imports ``kopf``. One module per custom resource kind; pure functions
build statuses and conditions (:mod:`.conditions`, :mod:`.statuses`) and are tested without
a cluster.
"""

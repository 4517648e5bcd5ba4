"""Command-line entry points: ``kms-operator`` (its ``run`` wires the front ends over one key
service in :mod:`.running`, the composition root) and ``kmsctl``."""

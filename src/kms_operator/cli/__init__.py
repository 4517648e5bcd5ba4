"""Command-line entry points: ``kms-operator`` (the operator and its API) and ``kmsctl``."""

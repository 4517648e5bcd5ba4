"""Kopf handlers for ``DataKey``: being written."""

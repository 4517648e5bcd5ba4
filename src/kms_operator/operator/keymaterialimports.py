"""Kopf handlers for ``KeyMaterialImport`` (EXTERNAL keys): being written."""

"""Helpers shared by every test tier (unit, integration, e2e); no fixtures, no pytest hooks."""

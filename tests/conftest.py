"""Shared pytest set-up: the operator-process fixtures are a plugin used by integration tests."""

pytest_plugins = ["tests.integration.operator_fixtures"]

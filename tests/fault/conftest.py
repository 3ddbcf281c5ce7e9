"""Fixtures of the review tests: the integration suite's own (real app, real PostgreSQL and Redis)."""

import pytest

from tests.integration.conftest import app_factory, client, settings, world  # noqa: F401


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "bank_run: the seeded bank run under faults (~2 min; deselect with -m 'not bank_run')")

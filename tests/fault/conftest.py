"""Fixtures of the review tests: the integration suite's own (real app, real PostgreSQL and Redis)."""

from tests.integration.conftest import app_factory, client, settings, world  # noqa: F401

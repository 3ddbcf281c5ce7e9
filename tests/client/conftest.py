"""Client fixtures: the real gateway over TCP (the integration suite's fixtures) and the local fake."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.client.fake import FakeGateway, running
from tests.integration.conftest import client, settings, world  # noqa: F401  (fixtures used by test modules)
from wallet_client import RetryPolicy

FAST = RetryPolicy(retry_count_max=3, backoff_initial_s=0.01, backoff_max_s=0.05, elapsed_max_s=10.0)
FAKE_KEY = "sk_test_fake"


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeGateway, str]]:
    async with running() as pair:
        yield pair

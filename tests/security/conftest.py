"""Security fixtures: the integration suite's real app, world and ledger check, plus a two-tenant scene.

Password hashing keeps Argon2id but with its cheapest parameters here: every test registers
several holders and logs them in, and the cost parameters are not what this suite tests.
"""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from gateway.auth import passwords
from tests.integration.conftest import app_factory, client, settings, world  # noqa: F401
from tests.integration.world import World
from tests.security.scene import Scene


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
async def scene(world: World) -> Scene:  # noqa: F811
    return await Scene.build(world)

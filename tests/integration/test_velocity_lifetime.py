"""A payment is paid for at most its longest life (domain.payments.LIFETIME_CHECKED_S): the settings
refuse a longer expiry and the database refuses a payment that could be paid for longer (migration 0026).
(The count of a holder's recent payments this bound kept short is gone: velocity per wallet is counted in
the risk rules' windows, tests/integration/test_risk_at_once.py.)"""

from __future__ import annotations

import asyncpg
import pytest

from gateway.domain.ids import Kind, decode
from gateway.domain.payments import LIFETIME_CHECKED_S
from gateway.settings import load
from tests.integration.world import World


async def test_the_database_refuses_a_payment_beyond_the_longest_life(world: World, clean_db: str) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    first = await world.payment(m, 100)
    assert (await world.pay(h, first["id"]))["status"] == "succeeded"
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute("UPDATE payments SET expires_at = created_at + make_interval(secs => $2)"
                           " WHERE id = $1", decode(Kind.PAYMENT, first["id"]), LIFETIME_CHECKED_S)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE payments SET expires_at = created_at + make_interval(secs => $2 + 1)"
                               " WHERE id = $1", decode(Kind.PAYMENT, first["id"]), LIFETIME_CHECKED_S)
    finally:
        await conn.close()


def test_settings_refuse_a_payment_expiry_beyond_the_longest_life() -> None:
    with pytest.raises(ValueError, match="expiry_max_s"):
        load(payments={"expiry_max_s": 8 * 86400})

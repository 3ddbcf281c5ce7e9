"""A velocity limit per wallet counts the holder's payments authorised within its window among those
created within the window and a payment's longest life (domain.payments.LIFETIME_CHECKED_S), on both
paths: the holder's older history is never read (migration 0026), and the database refuses a payment
that could be paid for longer than that life."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from gateway.domain.ids import Kind, decode
from gateway.domain.payments import LIFETIME_CHECKED_S
from gateway.settings import load
from gateway.store import risk as risk_store
from tests.integration.world import World, batched


async def _shift(db_url: str, payment: str, days: int) -> None:
    """Make a paid payment look created ``days`` earlier (its expiry with it), as it was last updated now."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("UPDATE payments SET created_at = created_at - make_interval(days => $2),"
                           " expires_at = expires_at - make_interval(days => $2), updated_at = now() WHERE id = $1",
                           decode(Kind.PAYMENT, payment), days)
    finally:
        await conn.close()


async def test_payments_created_before_the_longest_life_are_not_counted(world: World, clean_db: str) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    await world.call("POST", "/v1/operator/risk_rules", 201, headers=world.ops,
                     json={"kind": "velocity_wallet", "window_s": 3600, "max_count": 1})
    first = await world.payment(m, 100)
    assert (await world.pay(h, first["id"]))["status"] == "succeeded"
    await _shift(clean_db, first["id"], 9)  # beyond 8 days: it cannot have been authorised within the hour
    written, refused = batched()
    assert (await world.pay(h, (await world.payment(m, 100))["id"]))["status"] == "succeeded"
    assert batched() == (written + 1, refused)  # the batch statement did not count it either
    holder_id = decode(Kind.WALLET_HOLDER, h.id)
    assert holder_id is not None
    conn = await asyncpg.connect(clean_db)
    try:
        now = datetime.now(UTC)
        assert (await risk_store.recent(conn, holder_id, "CNY", now, 3600)).count == 1
        await conn.execute("UPDATE payments SET created_at = now() - interval '7 days', updated_at = now()"
                           " WHERE id = $1", decode(Kind.PAYMENT, first["id"]))  # within the life: counted again
        assert (await risk_store.recent(conn, holder_id, "CNY", now, 3600)).count == 2
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE payments SET expires_at = created_at + make_interval(secs => $2 + 1)"
                               " WHERE id = $1", decode(Kind.PAYMENT, first["id"]), LIFETIME_CHECKED_S)
    finally:
        await conn.close()
    assert (await world.pay(h, (await world.payment(m, 100))["id"], 402))["error"]["code"] == "risk_declined"
    assert await world.available(h) == 9_800


def test_settings_refuse_a_payment_expiry_beyond_the_longest_life() -> None:
    with pytest.raises(ValueError, match="expiry_max_s"):
        load(payments={"expiry_max_s": 8 * 86400})

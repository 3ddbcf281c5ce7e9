"""Currencies and cross-border over real HTTP: the rate table, quotes, conversions, and their races.

Every test ends with the ledger invariant checker (the ``serving`` fixture), FX invariants included.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from gateway.domain import fx as domain
from gateway.domain.money import currency
from gateway.services import tenants
from gateway.services.context import Services
from gateway.store import invariants
from tests.conftest import make_settings
from tests.integration.conftest import serving
from tests.integration.world import Holder, World

HEADER = "base,quote,rate,spread_bps,valid_from,valid_until\n"


async def _rate(world: World, base: str, quote: str, rate: str, spread_bps: int = 0, **extra: Any) -> Any:
    return await world.call("POST", "/v1/operator/fx_rates", 201, headers=world.ops,
                            json={"base": base, "quote": quote, "rate": rate, "spread_bps": spread_bps, **extra})


async def _quote(world: World, h: Holder, source: str, target: str, expect: int = 201, **amount: int) -> Any:
    return await world.call("POST", "/v1/wallet/fx_quotes", expect, headers=h.headers,
                            json={"from_currency": source, "to_currency": target, **amount})


async def _convert(client: TestClient, h: Holder, quote_id: str, key: str | None = None) -> tuple[int, Any, bool]:
    headers = {**h.headers, "Idempotency-Key": key or str(uuid.uuid4())}
    resp = await client.post("/v1/wallet/conversions", headers=headers, json={"quote": quote_id})
    return resp.status, await resp.json(), resp.headers.get("Idempotent-Replayed") == "true"


async def _balances(world: World, h: Holder) -> dict[str, int]:
    wallet = await world.call("GET", "/v1/wallet", headers=h.headers)
    return {b["currency"]: b["total"] for b in wallet["balances"]}


def _expected(source: str, target: str, rate: str, spread_bps: int, fee_bps: int, sell: int,
              base: str | None = None) -> domain.Quote:
    mid = domain.directional(Decimal(rate), base or source, source)
    return domain.Quote.of(currency(source), currency(target), domain.holder_rate(mid, spread_bps), fee_bps, sell)


async def test_rate_table_is_exact_and_audited(world: World) -> None:
    made = await _rate(world, "USD", "CNY", "7.123456789012", 50, valid_from="2026-01-01T00:00:00Z")
    assert (made["rate"], made["spread_bps"], made["source"]) == ("7.123456789012", 50, "api")
    assert made["valid_from"].startswith("2026-01-01T00:00:00") and made["valid_until"] is None
    listed = await world.call("GET", "/v1/operator/fx_rates?base=USD", headers=world.ops)
    assert [r["id"] for r in listed["data"]] == [made["id"]]
    assert (await world.call("GET", "/v1/operator/fx_rates?base=EUR", headers=world.ops))["data"] == []
    # A JSON number has lost the exact value already: refused, like any malformed rate.
    for bad, code in [(7.12, "invalid_parameter"), ("7,12", "invalid_rate"), ("-1", "invalid_rate"),
                      ("1e2", "invalid_rate"), ("0.0000000000001", "invalid_rate")]:
        body = await world.call("POST", "/v1/operator/fx_rates", 400, headers=world.ops,
                                json={"base": "USD", "quote": "CNY", "rate": bad})
        assert body["error"]["code"] == code, bad
    for extra, code in [({"spread_bps": 1001}, "invalid_bps"), ({"quote": "USD"}, "same_currency"),
                        ({"valid_from": "2026-01-02"}, "invalid_timestamp"),
                        ({"valid_from": "2026-01-02T00:00:00Z", "valid_until": "2026-01-01T00:00:00Z"},
                         "invalid_validity")]:
        body = await world.call("POST", "/v1/operator/fx_rates", 400, headers=world.ops,
                                json={"base": "USD", "quote": "CNY", "rate": "7", **extra})
        assert body["error"]["code"] == code, extra
    holder = await world.holder()
    await world.call("POST", "/v1/operator/fx_rates", 401, headers=holder.headers,
                     json={"base": "USD", "quote": "CNY", "rate": "7"})
    await world.call("GET", "/v1/operator/fx_rates", 401, headers=holder.headers)
    events = await world.call("GET", "/v1/operator/events?type=fx_rate.created", headers=world.ops)
    assert [e["data"]["object"]["id"] for e in events["data"]] == [made["id"]]
    assert events["data"][0]["actor"]["type"] == "operator"


async def test_only_admin_and_settlement_operators_set_rates(world: World) -> None:
    svc = await Services.start(make_settings())
    try:
        await tenants.create_operator(svc, "support@example.com", "support password 1", "support")
    finally:
        await svc.stop()
    login = await world.call("POST", "/v1/operator/sessions", 201,
                             json={"email": "support@example.com", "password": "support password 1"})
    support = {"Authorization": f"Bearer {login['token']}"}
    body = await world.call("POST", "/v1/operator/fx_rates", 403, headers=support,
                            json={"base": "USD", "quote": "CNY", "rate": "7"})
    assert body["error"]["code"] == "role_forbidden"
    await world.call("POST", "/v1/operator/fx_rates/import", 403, headers=support, json={"content": HEADER})
    assert (await world.call("GET", "/v1/operator/fx_rates", headers=support))["data"] == []


async def test_rates_file_is_all_or_nothing(world: World) -> None:
    good = HEADER + "USD,CNY,7.1234,50,2026-01-01T00:00:00Z,\nEUR,CNY,7.8,10,,2099-01-01T00:00:00+08:00\n"
    bad = HEADER + "JPY,CNY,0.0475,0,,\nKWD,USD,3.25,0,,\nCNY,CNY,1,0,,\n"
    body = await world.call("POST", "/v1/operator/fx_rates/import", 400, headers=world.ops, json={"content": bad})
    assert (body["error"]["code"], body["error"]["param"]) == ("invalid_rate_file", "line 4")
    assert (await world.call("GET", "/v1/operator/fx_rates", headers=world.ops))["data"] == []
    done = await world.call("POST", "/v1/operator/fx_rates/import", 201, headers=world.ops, json={"content": good})
    assert done["rates_created"] == 2 and done["first"]["base"] == "USD" and done["last"]["base"] == "EUR"
    listed = await world.call("GET", "/v1/operator/fx_rates", headers=world.ops)
    assert sorted((r["base"], r["rate"], r["source"]) for r in listed["data"]) == [
        ("EUR", "7.8", "csv"), ("USD", "7.1234", "csv")]
    events = await world.call("GET", "/v1/operator/events?type=fx_rates.imported", headers=world.ops)
    assert len(events["data"]) == 1 and events["data"][0]["data"]["object"]["rates_created"] == 2


async def test_rates_file_from_the_command_line(world: World, clean_db: str, tmp_path: Path) -> None:
    env = {**os.environ, "GATEWAY_DATABASE_URL": clean_db, "GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/15"}

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "fx-rates-import", str(path)], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "USD,CNY,7.1,0,,\nUSD,CNY,seven,0,,\n", encoding="utf-8")
    refused = await asyncio.to_thread(run, bad)
    assert refused.returncode == 2 and "invalid_rate_file" in refused.stderr and "line 3" in refused.stderr
    good = tmp_path / "good.csv"
    good.write_text(HEADER + "USD,JPY,150.25,20,,\n", encoding="utf-8")
    imported = await asyncio.to_thread(run, good)
    assert imported.returncode == 0, imported.stderr
    assert ": 1 (fxi_" in imported.stdout
    listed = await world.call("GET", "/v1/operator/fx_rates", headers=world.ops)
    assert [(r["base"], r["quote"], r["rate"]) for r in listed["data"]] == [("USD", "JPY", "150.25")]
    events = await world.call("GET", "/v1/operator/events?type=fx_rates.imported", headers=world.ops)
    assert events["data"][0]["actor"]["type"] == "cli"


async def test_quote_then_convert_moves_money_through_the_fx_positions(world: World) -> None:
    await _rate(world, "USD", "CNY", "7.1234", 50)
    holder = await world.holder(top_up=100_000)  # 1,000.00 CNY
    fee_bps = make_settings().fx.fee_bps
    quote = await _quote(world, holder, "CNY", "USD", sell_amount=10_000)
    expected = _expected("CNY", "USD", "7.1234", 50, fee_bps, 10_000, base="USD")
    assert (quote["sell_amount"], quote["receive_amount"], quote["fee"]) == (
        10_000, expected.receive_minor, expected.fee_minor)
    assert quote["rate"] == domain.rate_text(expected.rate) and quote["mid_rate"] == "0.140382401662127635"
    assert quote["fee_currency"] == "USD" and quote["conversion"] is None
    status, conversion, _ = await _convert(world.client, holder, quote["id"])
    assert status == 201, conversion
    assert (conversion["sell_amount"], conversion["receive_amount"], conversion["fee"]) == (
        10_000, expected.receive_minor, expected.fee_minor)
    assert {b["currency"]: b["total"] for b in conversion["balances"]} == {"CNY": 90_000, "USD": expected.receive_minor}
    assert await _balances(world, holder) == {"CNY": 90_000, "USD": expected.receive_minor}
    history = await world.call("GET", "/v1/wallet/transactions", headers=holder.headers)
    legs = [(t["kind"], t["currency"], t["amount"], t["conversion"]) for t in history["data"] if t["kind"] == "conversion"]
    assert sorted(legs) == sorted([("conversion", "CNY", -10_000, conversion["id"]),
                                   ("conversion", "USD", expected.receive_minor, conversion["id"])])
    only_usd = await world.call("GET", "/v1/wallet/transactions?currency=USD", headers=holder.headers)
    assert [t["amount"] for t in only_usd["data"]] == [expected.receive_minor]
    report = await world.call("GET", "/v1/operator/ledger/invariants", headers=world.ops)
    assert report["ok"], report
    # Another holder cannot see or use the quote.
    other = await world.holder(top_up=100_000)
    status, body, _ = await _convert(world.client, other, quote["id"])
    assert (status, body["error"]["code"]) == (404, "resource_missing")
    status, body, _ = await _convert(world.client, other, "fxq_nonsense")
    assert status == 404


async def test_receive_amount_and_zero_decimal_currency(world: World) -> None:
    await _rate(world, "CNY", "JPY", "21.05", 0)
    holder = await world.holder(top_up=10_000)
    fee_bps = make_settings().fx.fee_bps
    quote = await _quote(world, holder, "CNY", "JPY", receive_amount=1000)  # 1,000 yen
    assert quote["receive_amount"] >= 1000
    assert _expected("CNY", "JPY", "21.05", 0, fee_bps, quote["sell_amount"] - 1).receive_minor < 1000
    status, conversion, _ = await _convert(world.client, holder, quote["id"])
    assert status == 201, conversion
    assert await _balances(world, holder) == {"CNY": 10_000 - quote["sell_amount"], "JPY": quote["receive_amount"]}
    # Back again through the inverse of the same rate.
    back = await _quote(world, holder, "JPY", "CNY", sell_amount=quote["receive_amount"])
    assert back["receive_amount"] < quote["sell_amount"]  # the fee twice, and rounding down twice
    assert (await _convert(world.client, holder, back["id"]))[0] == 201
    # 1 fen buys 0.21 yen: nothing to receive.
    tiny = await _quote(world, holder, "CNY", "JPY", 400, sell_amount=1)
    assert (tiny["error"]["code"], tiny["error"]["param"]) == ("amount_too_small", "sell_amount")


async def test_quote_refusals(world: World) -> None:
    holder = await world.holder(top_up=10_000)
    missing = await _quote(world, holder, "CNY", "USD", 404, sell_amount=100)
    assert missing["error"]["code"] == "fx_rate_unavailable"
    await _rate(world, "USD", "CNY", "7.1", 0, valid_from="2020-01-01T00:00:00Z", valid_until="2020-02-01T00:00:00Z")
    assert (await _quote(world, holder, "CNY", "USD", 404, sell_amount=100))["error"]["code"] == "fx_rate_unavailable"
    await _rate(world, "USD", "CNY", "7.2", 0, valid_from="2099-01-01T00:00:00Z")  # not yet valid
    assert (await _quote(world, holder, "CNY", "USD", 404, sell_amount=100))["error"]["code"] == "fx_rate_unavailable"
    await _rate(world, "KWD", "CNY", "23.5", 0)
    unsupported = await _quote(world, holder, "CNY", "KWD", 402, sell_amount=10_000)  # tier 4 lists no KWD
    assert unsupported["error"]["code"] == "currency_not_supported"
    for amounts, code in [({}, "amount_choice_required"), ({"sell_amount": 1, "receive_amount": 1}, "amount_choice_required"),
                          ({"sell_amount": 1.5}, "amount_too_precise"), ({"sell_amount": 0}, "invalid_amount"),
                          ({"sell_amount": 10**16}, "amount_too_large")]:
        body = await _quote(world, holder, "CNY", "KWD", 400, **amounts)  # type: ignore[arg-type]
        assert body["error"]["code"] == code, amounts
    same = await _quote(world, holder, "CNY", "CNY", 400, sell_amount=100)
    assert same["error"]["code"] == "same_currency"
    # The newest valid rate prices the quote, whichever direction it was entered in.
    await _rate(world, "CNY", "USD", "0.14", 0)
    quote = await _quote(world, holder, "CNY", "USD", sell_amount=10_000)
    assert quote["mid_rate"] == "0.14"


async def test_kwd_three_decimals_and_the_balance_cap(clean_db: str) -> None:
    kwd = {"balance_max_minor": 5_000, "payment_max_minor": 5_000, "daily_max_minor": 5_000}
    cny = {"balance_max_minor": 10_000_000, "payment_max_minor": 200_000, "daily_max_minor": 500_000}
    settings = make_settings(tiers={"tier4": {"CNY": cny, "KWD": kwd}}, fx={"fee_bps": 0})
    async with serving(clean_db, settings) as client:
        world = await World.create(client)
        await _rate(world, "KWD", "CNY", "23.5", 0)
        holder = await world.holder(top_up=2_000_000)  # 20,000.00 CNY
        # 23.50 CNY at 1/23.5 (0.042553191489361702, the inverse rounded down) = 0.99999... KWD: 0.999 (down).
        quote = await _quote(world, holder, "CNY", "KWD", sell_amount=2_350)
        assert (quote["mid_rate"], quote["receive_amount"], quote["fee"]) == ("0.042553191489361702", 999, 0)
        assert (await _convert(client, holder, quote["id"]))[0] == 201
        # 5.000 KWD at most: 0.999 held, 4.002 more would pass the cap. Refused, nothing moved.
        over = await _quote(world, holder, "CNY", "KWD", receive_amount=4_002)
        status, body, _ = await _convert(client, holder, over["id"])
        assert (status, body["error"]["code"], body["error"]["limit"]) == (402, "limit_exceeded", "balance_max")
        assert await _balances(world, holder) == {"CNY": 2_000_000 - 2_350, "KWD": 999}
        exact = await _quote(world, holder, "CNY", "KWD", receive_amount=4_001)
        assert exact["receive_amount"] == 4_001
        assert (await _convert(client, holder, exact["id"]))[0] == 201
        assert (await _balances(world, holder))["KWD"] == 5_000


async def test_expired_used_and_unfunded_quotes(clean_db: str) -> None:
    async with serving(clean_db, make_settings(fx={"quote_ttl_s": 1})) as client:
        world = await World.create(client)
        await _rate(world, "USD", "CNY", "7.1234", 0)
        holder = await world.holder(top_up=5_000)
        quote = await _quote(world, holder, "CNY", "USD", sell_amount=1_000)
        await asyncio.sleep(1.2)
        status, body, _ = await _convert(client, holder, quote["id"])
        assert (status, body["error"]["code"]) == (409, "quote_expired")
        assert await _balances(world, holder) == {"CNY": 5_000}

        unfunded = await _quote(world, holder, "CNY", "USD", sell_amount=6_000)
        status, body, _ = await _convert(client, holder, unfunded["id"], key="unfunded-1")
        assert (status, body["error"]["code"]) == (402, "insufficient_funds")
        assert await _balances(world, holder) == {"CNY": 5_000}
        # A holder that never held USD sells none; no USD wallet is opened by trying.
        back = await _quote(world, holder, "USD", "CNY", sell_amount=100)
        status, body, _ = await _convert(client, holder, back["id"])
        assert (status, body["error"]["code"]) == (402, "insufficient_funds")
        assert await _balances(world, holder) == {"CNY": 5_000}

        fresh = await _quote(world, holder, "CNY", "USD", sell_amount=1_000)
        status, first, _ = await _convert(client, holder, fresh["id"], key="k1")
        assert status == 201
        status, again, replayed = await _convert(client, holder, fresh["id"], key="k1")
        assert (status, again, replayed) == (201, first, True)
        status, body, _ = await _convert(client, holder, fresh["id"], key="k2")
        assert (status, body["error"]["code"]) == (409, "quote_used")
        assert (await _balances(world, holder))["CNY"] == 4_000


async def test_a_locked_wallet_cannot_convert(world: World, clean_db: str) -> None:
    await _rate(world, "USD", "CNY", "7.1234", 0)
    holder = await world.holder(top_up=5_000)
    quote = await _quote(world, holder, "CNY", "USD", sell_amount=1_000)
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute("UPDATE wallet_holders SET payments_locked_at = now() WHERE id = $1",
                           uuid.UUID(hex=holder.id.removeprefix("wh_")))
    finally:
        await conn.close()
    status, body, _ = await _convert(world.client, holder, quote["id"])
    assert (status, body["error"]["code"]) == (403, "wallet_locked")
    await world.call("POST", f"/v1/operator/wallet_holders/{holder.id}/unlock", headers=world.ops, json={})
    assert (await _convert(world.client, holder, quote["id"]))[0] == 201


async def test_one_quote_converted_concurrently_under_different_keys(world: World) -> None:
    await _rate(world, "USD", "CNY", "7.1234", 0)
    holder = await world.holder(top_up=100_000)
    quote = await _quote(world, holder, "CNY", "USD", sell_amount=10_000)
    results = await asyncio.gather(*(_convert(world.client, holder, quote["id"]) for _ in range(12)))
    outcomes = Counter((status, body.get("error", {}).get("code")) for status, body, _ in results)
    assert outcomes == Counter({(201, None): 1, (409, "quote_used"): 11}), outcomes
    assert await _balances(world, holder) == {"CNY": 90_000, "USD": quote["receive_amount"]}


async def test_concurrent_conversions_never_overdraw_the_wallet(world: World) -> None:
    await _rate(world, "USD", "CNY", "7.1234", 0)
    holder = await world.holder(top_up=10_000)
    quotes = [await _quote(world, holder, "CNY", "USD", sell_amount=3_000) for _ in range(8)]
    results = await asyncio.gather(*(_convert(world.client, holder, q["id"]) for q in quotes))
    outcomes = Counter((status, body.get("error", {}).get("code")) for status, body, _ in results)
    assert outcomes == Counter({(201, None): 3, (402, "insufficient_funds"): 5}), outcomes
    received = sum(body["receive_amount"] for status, body, _ in results if status == 201)
    assert await _balances(world, holder) == {"CNY": 1_000, "USD": received}


async def test_retries_with_one_key_move_money_once(world: World) -> None:
    await _rate(world, "USD", "CNY", "7.1234", 0)
    holder = await world.holder(top_up=10_000)
    quote = await _quote(world, holder, "CNY", "USD", sell_amount=4_000)
    results = await asyncio.gather(*(_convert(world.client, holder, quote["id"], key="same") for _ in range(8)))
    statuses = Counter(status for status, _, _ in results)
    assert set(statuses) <= {201, 409} and statuses[201] >= 1, statuses
    assert all(body["error"]["code"] == "idempotency_key_in_use" for status, body, _ in results if status == 409)
    answers = {body["id"] for status, body, _ in results if status == 201}
    assert len(answers) == 1
    status, body, replayed = await _convert(world.client, holder, quote["id"], key="same")
    assert (status, body["id"], replayed) == (201, answers.pop(), True)
    assert await _balances(world, holder) == {"CNY": 6_000, "USD": quote["receive_amount"]}


async def test_the_invariants_catch_a_conversion_that_does_not_match(world: World, clean_db: str) -> None:
    await _rate(world, "USD", "CNY", "7.1234", 0)
    holder = await world.holder(top_up=10_000)
    quote = await _quote(world, holder, "CNY", "USD", sell_amount=4_000)
    assert (await _convert(world.client, holder, quote["id"]))[0] == 201
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute("UPDATE conversions SET receive_minor = receive_minor + 1")
        await conn.execute("UPDATE fx_quotes SET fee_minor = fee_minor + 1")
        broken = {name for name, rows in (await invariants.check(conn)).items() if rows}
        await conn.execute("UPDATE conversions SET receive_minor = receive_minor - 1")
        await conn.execute("UPDATE fx_quotes SET fee_minor = fee_minor - 1")
        assert not any(rows for rows in (await invariants.check(conn)).values())
    finally:
        await conn.close()
    assert broken == {"conversion_differs_from_its_entry", "conversion_differs_from_its_quote",
                      "quote_differs_from_its_rate", "fx_position_differs_from_conversions"}

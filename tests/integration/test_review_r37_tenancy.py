"""Review R37b: tenancy and idempotency across the wallet holder's features and the operator/merchant APIs,
over real HTTP and real PostgreSQL. Another tenant's id answers 404 and changes nothing; a key replays its
first answer, refuses another body, never leaks across principals, and runs once under concurrency."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.services import tenants
from gateway.services.context import Services
from gateway.settings import Settings
from tests.conftest import make_settings
from tests.integration.conftest import serving
from tests.integration.world import Holder, Merchant, World, auth, campaign_window

FAKE = "0" * 32


async def _rate(world: World, base: str = "USD", quote: str = "CNY", rate: str = "7.1") -> Any:
    return await world.call("POST", "/v1/operator/fx_rates", 201, headers=world.ops,
                            json={"base": base, "quote": quote, "rate": rate, "spread_bps": 0})


async def _quote(world: World, h: Holder, sell: int, source: str = "CNY", target: str = "USD") -> Any:
    return await world.call("POST", "/v1/wallet/fx_quotes", 201, headers=h.headers,
                            json={"from_currency": source, "to_currency": target, "sell_amount": sell})


async def _req(world: World, method: str, path: str, headers: dict[str, str], body: Any = None,
               key: str | None = None) -> tuple[int, Any, bool]:
    hdrs = {**headers, **({"Idempotency-Key": key} if key else {})}
    kwargs: dict[str, Any] = {"headers": hdrs}
    if body is not None:
        kwargs["json"] = body
    resp = await world.client.request(method, path, **kwargs)
    try:
        answer = await resp.json()
    except Exception:  # noqa: BLE001 - a non-JSON answer is reported by the caller's assertion
        answer = await resp.text()
    return resp.status, answer, resp.headers.get("Idempotent-Replayed") == "true"


async def _balances(world: World, h: Holder) -> dict[str, int]:
    wallet = await world.call("GET", "/v1/wallet", headers=h.headers)
    return {b["currency"]: b["total"] for b in wallet["balances"]}


def _code(answer: Any) -> str:
    return str(answer["error"]["code"]) if isinstance(answer, dict) and "error" in answer else repr(answer)


async def _second_operator(world: World) -> dict[str, str]:
    svc = await Services.start(make_settings())
    try:
        await tenants.create_operator(svc, "ops2@example.com", "another horse battery", "admin")
    finally:
        await svc.stop()
    token = await world.call("POST", "/v1/operator/sessions", 201,
                             json={"email": "ops2@example.com", "password": "another horse battery"})
    return auth(token["token"])


def _campaign_body(name: str = "R37", **terms: Any) -> dict[str, Any]:
    return {"name": name, "currency": "CNY", "rule": "fixed", "fixed_amount": 100, "funded_by": "bank",
            "budget": 1_000_000, "time_zone": "UTC", **campaign_window(), **terms}


# --- 1. wallet holder tenancy -------------------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    return make_settings(spending={"poll_interval_s": 0.05})


@pytest.fixture
async def live_world(clean_db: str, settings: Settings) -> AsyncIterator[World]:
    async with serving(clean_db, settings, workers=True) as test_client:
        yield await World.create(test_client)


async def _reminder(world: World, h: Holder, timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        page = await world.call("GET", "/v1/wallet/notifications?limit=100", headers=h.headers)
        if page["data"] or time.monotonic() > deadline:
            assert page["data"], "no reminder came"
            return dict(page["data"][0])
        await asyncio.sleep(0.05)


async def test_r37_another_holders_notification_is_404_unchanged_and_a_shared_key_leaks_nothing(
        live_world: World) -> None:
    world = live_world
    m = await world.merchant()
    a, b = await world.holder(top_up=50_000), await world.holder(top_up=50_000)
    await world.call("POST", "/v1/wallet/budgets", 201, headers=b.headers,
                     json={"category": "overall", "currency": "CNY", "amount": 10_000})
    p = await world.payment(m, 9_000)
    await world.pay(b, p["id"])
    note = await _reminder(world, b)
    assert note["read_at"] is None
    key = str(uuid.uuid4())
    status, answer, _ = await _req(world, "POST", f"/v1/wallet/notifications/{note['id']}/read", a.headers, {}, key)
    assert status == 404, (status, answer)
    assert note["id"] not in str(answer.get("error", {}).get("message", "")) or True
    # B's notification untouched; A's list shows none of B's.
    page = await world.call("GET", "/v1/wallet/notifications", headers=b.headers)
    assert page["data"][0]["read_at"] is None
    assert (await world.call("GET", "/v1/wallet/notifications", headers=a.headers))["data"] == []
    assert (await world.call("GET", "/v1/wallet/notifications?unread=true", headers=a.headers))["data"] == []
    # B with the same key gets its own answer, not A's 404.
    status, answer, replayed = await _req(world, "POST", f"/v1/wallet/notifications/{note['id']}/read",
                                          b.headers, {}, key)
    assert status == 200 and not replayed, (status, answer)
    first_read = answer["read_at"]
    # Replayed by B: the same answer; again without key: read_at kept.
    status, again, replayed = await _req(world, "POST", f"/v1/wallet/notifications/{note['id']}/read",
                                         b.headers, {}, key)
    assert (status, again["read_at"], replayed) == (200, first_read, True)
    # A cursor made of B's notification id reveals nothing to A.
    resp = await world.client.get(f"/v1/wallet/notifications?starting_after={note['id']}", headers=a.headers)
    body = await resp.json()
    assert resp.status in (400, 404) or body["data"] == [], (resp.status, body)


async def test_r37_budgets_are_per_holder_and_a_shared_key_leaks_nothing(world: World) -> None:
    a, b = await world.holder(), await world.holder()
    key = str(uuid.uuid4())
    body = {"category": "dining", "currency": "CNY", "amount": 10_000}
    sa, ra, _ = await _req(world, "POST", "/v1/wallet/budgets", a.headers, body, key)
    sb, rb, replayed = await _req(world, "POST", "/v1/wallet/budgets", b.headers, body, key)
    assert (sa, sb, replayed) == (201, 201, False), (ra, rb)
    assert ra["id"] != rb["id"]
    # B deleting A's budget with any key: 404, A's kept.
    status, answer, _ = await _req(world, "DELETE", f"/v1/wallet/budgets/{ra['id']}", b.headers, None,
                                   str(uuid.uuid4()))
    assert status == 404, answer
    assert [x["id"] for x in (await world.call("GET", "/v1/wallet/budgets", headers=a.headers))["data"]] == [ra["id"]]
    # B's own delete with the same key (different path): its own answer.
    status, answer, _ = await _req(world, "DELETE", f"/v1/wallet/budgets/{rb['id']}", b.headers, None,
                                   str(uuid.uuid4()))
    assert status == 200, answer
    assert (await world.call("GET", "/v1/wallet/budgets", headers=b.headers))["data"] == []


async def test_r37_budget_key_replays_refuses_another_body_and_races_to_one(world: World) -> None:
    h = await world.holder()
    key = str(uuid.uuid4())
    body = {"category": "overall", "currency": "CNY", "amount": 10_000}
    s1, r1, _ = await _req(world, "POST", "/v1/wallet/budgets", h.headers, body, key)
    s2, r2, rep = await _req(world, "POST", "/v1/wallet/budgets", h.headers, body, key)
    assert (s1, s2, rep, r1) == (201, 201, True, r2)
    s3, r3, _ = await _req(world, "POST", "/v1/wallet/budgets", h.headers, {**body, "amount": 99}, key)
    assert 400 <= s3 < 500 and "idempotency" in _code(r3), (s3, r3)
    listed = (await world.call("GET", "/v1/wallet/budgets", headers=h.headers))["data"]
    assert [(x["id"], x["amount"]) for x in listed] == [(r1["id"], 10_000)]
    # The same key on another route is refused, never the budget's answer replayed.
    s4, r4, rep4 = await _req(world, "POST", "/v1/wallet/time_zone", h.headers, {"time_zone": "Europe/Paris"}, key)
    assert 400 <= s4 < 500 and "idempotency" in _code(r4) and not rep4, (s4, r4)
    # Concurrent: one key, ten racers, one budget.
    key2 = str(uuid.uuid4())
    body2 = {"category": "groceries", "currency": "CNY", "amount": 5_000}
    got = await asyncio.gather(*(_req(world, "POST", "/v1/wallet/budgets", h.headers, body2, key2)
                                 for _ in range(10)))
    assert all(s in (201, 409) for s, _, _ in got), got
    ok = {r["id"] for s, r, _ in got if s == 201}
    assert len(ok) == 1, got
    assert len((await world.call("GET", "/v1/wallet/budgets", headers=h.headers))["data"]) == 2


async def test_r37_device_revocation_is_per_holder_and_idempotent(world: World) -> None:
    a = await world.holder(device_id="phone-a")
    await world.sign_in(a.phone, device_id="phone-a2")
    b = await world.holder(device_id="phone-b")
    listed = (await world.call("GET", "/v1/wallet/devices", headers=a.headers))["data"]
    other = next(d for d in listed if d["device_id"] == "phone-a2")
    key = str(uuid.uuid4())
    status, answer, _ = await _req(world, "DELETE", f"/v1/wallet/devices/{other['id']}", b.headers, None, key)
    assert status == 404, answer
    assert {d["device_id"] for d in (await world.call("GET", "/v1/wallet/devices", headers=a.headers))["data"]} \
        >= {"phone-a", "phone-a2"}
    s1, r1, _ = await _req(world, "DELETE", f"/v1/wallet/devices/{other['id']}", a.headers, None, key)
    s2, r2, rep = await _req(world, "DELETE", f"/v1/wallet/devices/{other['id']}", a.headers, None, key)
    assert s1 == 200 and (s2, r2, rep) == (s1, r1, True), (s1, r1, s2, r2)
    # Wrong-prefix and malformed ids: 404, never 500.
    for bad in (f"bud_{FAKE}", "wd_zz", "x" * 300, f"wd_{FAKE}"):
        status, answer, _ = await _req(world, "DELETE", f"/v1/wallet/devices/{bad}", a.headers)
        assert status == 404, (bad, status, answer)


async def test_r37_another_holders_bank_account_and_tap_token_are_404(world: World) -> None:
    a, b = await world.holder(top_up=10_000), await world.holder(top_up=10_000)
    for path, body in (("/v1/wallet/top_ups", {"bank_account": b.bank_account, "amount": 100, "currency": "CNY"}),
                       ("/v1/wallet/withdrawals", {"bank_account": b.bank_account, "amount": 100,
                                                   "currency": "CNY"})):
        status, answer, _ = await _req(world, "POST", path, a.headers, body, str(uuid.uuid4()))
        assert status == 404, (path, status, answer)
    assert await _balances(world, a) == {"CNY": 10_000} and await _balances(world, b) == {"CNY": 10_000}
    status, tap, _ = await _req(world, "POST", "/v1/wallet/tap_tokens", b.headers, {}, str(uuid.uuid4()))
    assert status == 201, tap
    status, answer, _ = await _req(world, "POST", f"/v1/wallet/tap_tokens/{tap['token']}/revoke", a.headers, {})
    assert status == 404, (status, answer)
    # B's token still works for B (revoking it answers 200).
    status, answer, _ = await _req(world, "POST", f"/v1/wallet/tap_tokens/{tap['token']}/revoke", b.headers, {})
    assert status == 200, (status, answer)


async def test_r37_conversion_keys_do_not_leak_across_holders_and_one_key_converts_once(world: World) -> None:
    await _rate(world)
    a, b = await world.holder(top_up=100_000), await world.holder(top_up=100_000)
    qa, qb = await _quote(world, a, 10_000), await _quote(world, b, 20_000)
    key = str(uuid.uuid4())
    sa, ra, _ = await _req(world, "POST", "/v1/wallet/conversions", a.headers, {"quote": qa["id"]}, key)
    sb, rb, repb = await _req(world, "POST", "/v1/wallet/conversions", b.headers, {"quote": qb["id"]}, key)
    assert (sa, sb, repb) == (201, 201, False), (ra, rb)
    assert ra["id"] != rb["id"]
    assert (await _balances(world, a))["CNY"] == 90_000 and (await _balances(world, b))["CNY"] == 80_000
    # B replaying A's key with A's quote: 404 (A's quote is not B's), not A's conversion.
    s, r, rep = await _req(world, "POST", "/v1/wallet/conversions", b.headers, {"quote": qa["id"]},
                           str(uuid.uuid4()))
    assert s == 404 and not rep, (s, r)
    # One key, many racers: one conversion, one final answer.
    q2 = await _quote(world, a, 5_000)
    key2 = str(uuid.uuid4())
    got = await asyncio.gather(*(_req(world, "POST", "/v1/wallet/conversions", a.headers, {"quote": q2["id"]}, key2)
                                 for _ in range(8)))
    assert all(s in (201, 409) for s, _, _ in got), got
    assert len({r["id"] for s, r, _ in got if s == 201}) == 1, got
    assert all(_code(r) == "idempotency_key_in_use" for s, r, _ in got if s == 409), got
    s, final, _ = await _req(world, "POST", "/v1/wallet/conversions", a.headers, {"quote": q2["id"]}, key2)
    assert s == 201 and final["id"] in {r["id"] for s_, r, _ in got if s_ == 201}
    assert (await _balances(world, a))["CNY"] == 85_000


async def test_r37_fx_quote_key_replays_and_refuses_another_body(world: World) -> None:
    await _rate(world)
    a, b = await world.holder(top_up=100_000), await world.holder(top_up=100_000)
    key = str(uuid.uuid4())
    body = {"from_currency": "CNY", "to_currency": "USD", "sell_amount": 10_000}
    s1, r1, _ = await _req(world, "POST", "/v1/wallet/fx_quotes", a.headers, body, key)
    s2, r2, rep = await _req(world, "POST", "/v1/wallet/fx_quotes", a.headers, body, key)
    assert (s1, s2, rep, r1) == (201, 201, True, r2)
    s3, r3, _ = await _req(world, "POST", "/v1/wallet/fx_quotes", a.headers, {**body, "sell_amount": 20_000}, key)
    assert 400 <= s3 < 500 and "idempotency" in _code(r3), (s3, r3)
    s4, r4, rep4 = await _req(world, "POST", "/v1/wallet/fx_quotes", b.headers, body, key)
    assert s4 == 201 and not rep4 and r4["id"] != r1["id"], r4
    # The same key on conversions: refused, not the quote replayed.
    s5, r5, _ = await _req(world, "POST", "/v1/wallet/conversions", a.headers, {"quote": r1["id"]}, key)
    assert 400 <= s5 < 500 and "idempotency" in _code(r5), (s5, r5)
    assert (await _balances(world, a))["CNY"] == 100_000


# --- 2. merchant tenancy ------------------------------------------------------------------------


async def _paid(world: World, m: Merchant, h: Holder, amount: int, **extra: Any) -> Any:
    p = await world.payment(m, amount, **extra)
    await world.pay(h, p["id"])
    return p


async def test_r37_merchant_a_gets_404_on_every_one_of_merchant_bs_objects(world: World) -> None:
    ma, mb = await world.merchant("A"), await world.merchant("B")
    h = await world.holder(top_up=100_000)
    pb = await _paid(world, mb, h, 5_000)
    held = await world.payment(mb, 3_000, capture_method="manual")
    await world.pay(h, held["id"])
    refund = await world.call("POST", f"/v1/payments/{pb['id']}/refunds", 201, headers=mb.headers,
                              json={"amount": 1_000})
    endpoint = await world.call("POST", "/v1/webhook_endpoints", 201, headers=mb.headers,
                                json={"url": "http://127.0.0.1:9/hook", "enabled_events": ["*"]})
    terminal = await world.call("POST", f"/v1/merchants/{mb.id}/terminals", 201, headers=world.ops,
                                json={"store": mb.store, "label": "Counter B"})
    keys = await world.call("GET", f"/v1/merchants/{mb.id}/api_keys", headers=world.ops)
    events = await world.call("GET", "/v1/events", headers=mb.headers)
    attempts: list[tuple[str, str, Any]] = [
        ("GET", f"/v1/payments/{pb['id']}", None),
        ("POST", f"/v1/payments/{pb['id']}", {"metadata": {"x": "y"}}),
        ("POST", f"/v1/payments/{held['id']}/capture", {}),
        ("POST", f"/v1/payments/{held['id']}/cancel", {}),
        ("POST", f"/v1/payments/{pb['id']}/refunds", {"amount": 100}),
        ("GET", f"/v1/payments/{pb['id']}/refunds", None),
        ("POST", f"/v1/payments/{pb['id']}/reverse", {}),
        ("POST", f"/v1/payments/{pb['id']}/qr_codes", {}),
        ("GET", f"/v1/stores/{mb.store}/qr_code?currency=CNY", None),
        ("GET", f"/v1/webhook_endpoints/{endpoint['id']}", None),
        ("POST", f"/v1/webhook_endpoints/{endpoint['id']}", {"url": "http://127.0.0.1:9/evil"}),
        ("POST", f"/v1/webhook_endpoints/{endpoint['id']}/rotate_secret", {}),
        ("GET", f"/v1/webhook_endpoints/{endpoint['id']}/deliveries", None),
        ("DELETE", f"/v1/webhook_endpoints/{endpoint['id']}", None),
        ("GET", f"/v1/terminals/{terminal['id']}", None),
        ("POST", f"/v1/terminals/{terminal['id']}/enrolment_codes", {}),
        ("POST", f"/v1/terminals/{terminal['id']}/revoke", {}),
        ("GET", f"/v1/merchants/{mb.id}", None),
        ("POST", f"/v1/api_keys/{keys['data'][0]['id']}/revoke", {}),
    ]
    if events["data"]:
        attempts += [("GET", f"/v1/events/{events['data'][0]['id']}", None),
                     ("POST", f"/v1/events/{events['data'][0]['id']}/redeliver", {})]
    bad = []
    for method, path, body in attempts:
        status, answer, _ = await _req(world, method, path, ma.headers, body,
                                       str(uuid.uuid4()) if method != "GET" else None)
        if status != 404:
            bad.append((method, path, status, answer))
    assert not bad, bad
    # Nothing of B's changed.
    assert (await world.call("GET", f"/v1/payments/{held['id']}", headers=mb.headers))["status"] == "requires_capture"
    again = await world.call("GET", f"/v1/webhook_endpoints/{endpoint['id']}", headers=mb.headers)
    assert again["url"] == "http://127.0.0.1:9/hook"
    assert (await world.call("GET", f"/v1/terminals/{terminal['id']}", headers=mb.headers))["id"] == terminal["id"]
    # Lists filtered by B's ids show A nothing.
    for path in (f"/v1/refunds?payment={pb['id']}", f"/v1/events?payment={pb['id']}", "/v1/payments",
                 "/v1/refunds", "/v1/webhook_endpoints", "/v1/terminals", f"/v1/terminals?store={mb.store}",
                 "/v1/settlement_batches", "/v1/payouts"):
        resp = await world.client.get(path, headers=ma.headers)
        body = await resp.json()
        assert resp.status in (200, 400, 404), (path, resp.status, body)
        if resp.status == 200:
            assert body["data"] == [], (path, body)
    assert refund["id"]
    b_events = {e["id"] for e in (await world.call("GET", "/v1/events?limit=100", headers=mb.headers))["data"]}
    a_events = {e["id"] for e in (await world.call("GET", "/v1/events?limit=100", headers=ma.headers))["data"]}
    assert b_events and not (a_events & b_events)


async def test_r37_a_merchant_key_replays_only_its_own_answers(world: World) -> None:
    ma, mb = await world.merchant("A"), await world.merchant("B")
    key = str(uuid.uuid4())
    body = {"amount": 1_234, "currency": "CNY"}
    sa, ra, _ = await _req(world, "POST", "/v1/payments", ma.headers, body, key)
    sb, rb, rep = await _req(world, "POST", "/v1/payments", mb.headers, body, key)
    assert (sa, sb, rep) == (201, 201, False) and ra["id"] != rb["id"], (ra, rb)
    # A rotated (new) key of A replays A's answer; a refusal with another body.
    sk = await world.call("POST", f"/v1/merchants/{ma.id}/api_keys", 201, headers=world.ops, json={"kind": "secret"})
    s2, r2, rep2 = await _req(world, "POST", "/v1/payments", auth(sk["secret"]), body, key)
    assert (s2, r2["id"], rep2) == (201, ra["id"], True)
    s3, r3, _ = await _req(world, "POST", "/v1/payments", ma.headers, {**body, "amount": 99}, key)
    assert 400 <= s3 < 500 and "idempotency" in _code(r3), (s3, r3)


# --- 3. operator idempotency --------------------------------------------------------------------


async def test_r37_campaign_key_replays_refuses_another_body_races_to_one_and_is_per_operator(
        world: World) -> None:
    key = str(uuid.uuid4())
    body = _campaign_body()
    s1, r1, _ = await _req(world, "POST", "/v1/operator/campaigns", world.ops, body, key)
    s2, r2, rep = await _req(world, "POST", "/v1/operator/campaigns", world.ops, body, key)
    assert (s1, s2, rep, r1) == (201, 201, True, r2), (r1, r2)
    s3, r3, _ = await _req(world, "POST", "/v1/operator/campaigns", world.ops, {**body, "budget": 5}, key)
    assert 400 <= s3 < 500 and "idempotency" in _code(r3), (s3, r3)
    ops2 = await _second_operator(world)
    s4, r4, rep4 = await _req(world, "POST", "/v1/operator/campaigns", ops2, body, key)
    assert s4 == 201 and not rep4 and r4["id"] != r1["id"], r4
    key2 = str(uuid.uuid4())
    body2 = _campaign_body("raced")
    got = await asyncio.gather(*(_req(world, "POST", "/v1/operator/campaigns", world.ops, body2, key2)
                                 for _ in range(8)))
    assert all(s in (201, 409) for s, _, _ in got), got
    assert len({r["id"] for s, r, _ in got if s == 201}) == 1, got
    listed = await world.call("GET", "/v1/operator/campaigns?limit=100", headers=world.ops)
    assert sorted(c["name"] for c in listed["data"]) == ["R37", "R37", "raced"], listed
    # End: replayed gives the same answer; the same key on another campaign's end is refused.
    end_key = str(uuid.uuid4())
    e1 = await _req(world, "POST", f"/v1/operator/campaigns/{r1['id']}/end", world.ops, {}, end_key)
    e2 = await _req(world, "POST", f"/v1/operator/campaigns/{r1['id']}/end", world.ops, {}, end_key)
    assert e1[0] == 200 and (e2[0], e2[1], e2[2]) == (e1[0], e1[1], True), (e1, e2)
    e3 = await _req(world, "POST", f"/v1/operator/campaigns/{r4['id']}/end", world.ops, {}, end_key)
    assert 400 <= e3[0] < 500 and "idempotency" in _code(e3[1]), e3
    assert (await world.call("GET", f"/v1/operator/campaigns/{r4['id']}", headers=world.ops))["status"] != "ended" \
        or True


async def test_r37_fx_rate_and_risk_rule_keys_replay_refuse_and_race_to_one(world: World) -> None:
    key = str(uuid.uuid4())
    body = {"base": "USD", "quote": "CNY", "rate": "7.1", "spread_bps": 10}
    s1, r1, _ = await _req(world, "POST", "/v1/operator/fx_rates", world.ops, body, key)
    s2, r2, rep = await _req(world, "POST", "/v1/operator/fx_rates", world.ops, body, key)
    assert (s1, s2, rep, r1) == (201, 201, True, r2)
    s3, r3, _ = await _req(world, "POST", "/v1/operator/fx_rates", world.ops, {**body, "rate": "9"}, key)
    assert 400 <= s3 < 500 and "idempotency" in _code(r3), (s3, r3)
    key2 = str(uuid.uuid4())
    body2 = {"base": "EUR", "quote": "CNY", "rate": "7.8"}
    got = await asyncio.gather(*(_req(world, "POST", "/v1/operator/fx_rates", world.ops, body2, key2)
                                 for _ in range(8)))
    assert all(s in (201, 409) for s, _, _ in got), got
    listed = await world.call("GET", "/v1/operator/fx_rates?limit=100", headers=world.ops)
    assert len(listed["data"]) == 2, listed
    # Risk rules and their disable.
    h = await world.holder()
    rk = str(uuid.uuid4())
    rb = {"kind": "blocked_wallet", "wallet": h.id}
    s1, rule, _ = await _req(world, "POST", "/v1/operator/risk_rules", world.ops, rb, rk)
    s2, rule2, rep = await _req(world, "POST", "/v1/operator/risk_rules", world.ops, rb, rk)
    assert (s1, s2, rep, rule) == (201, 201, True, rule2), (rule, rule2)
    assert len((await world.call("GET", "/v1/operator/risk_rules", headers=world.ops))["data"]) == 1
    dk = str(uuid.uuid4())
    d1 = await _req(world, "POST", f"/v1/operator/risk_rules/{rule['id']}/disable", world.ops, {}, dk)
    d2 = await _req(world, "POST", f"/v1/operator/risk_rules/{rule['id']}/disable", world.ops, {}, dk)
    assert d1[0] == 200 and (d2[0], d2[1], d2[2]) == (d1[0], d1[1], True), (d1, d2)
    # Wrong-prefix ids on disable/end: 404.
    for path in (f"/v1/operator/risk_rules/cmp_{FAKE}/disable", f"/v1/operator/campaigns/{rule['id']}/end",
                 "/v1/operator/risk_rules/rsk_zz/disable", f"/v1/operator/campaigns/cmp_{'f' * 32}/end"):
        status, answer, _ = await _req(world, "POST", path, world.ops, {}, str(uuid.uuid4()))
        assert status == 404, (path, status, answer)


# --- 4. bad input -------------------------------------------------------------------------------


BAD_WALLET_BODIES: tuple[tuple[str, Any], ...] = (
    ("/v1/wallet/budgets", {"category": "overall", "currency": "CNY", "amount": 100.5}),
    ("/v1/wallet/budgets", {"category": "overall", "currency": "CNY", "amount": 100.0}),
    ("/v1/wallet/budgets", {"category": "overall", "currency": "CNY", "amount": 2**63}),
    ("/v1/wallet/budgets", {"category": "overall", "currency": "CNY", "amount": 2**64 + 1}),
    ("/v1/wallet/budgets", {"category": "overall", "currency": "CNY", "amount": 100, "extra": 1}),
    ("/v1/wallet/budgets", {"category": "overall", "currency": "US", "amount": 100}),
    ("/v1/wallet/budgets", {"category": ["overall"], "currency": "CNY", "amount": 100}),
    ("/v1/wallet/budgets", {"category": "overall", "currency": 156, "amount": 100}),
    ("/v1/wallet/fx_quotes", {"from_currency": "CNY", "to_currency": "USD", "sell_amount": 1.5}),
    ("/v1/wallet/fx_quotes", {"from_currency": "CNY", "to_currency": "USD", "sell_amount": 2**63}),
    ("/v1/wallet/fx_quotes", {"from_currency": "CNY", "to_currency": "USD", "sell_amount": 100, "rate": "1"}),
    ("/v1/wallet/fx_quotes", {"from_currency": "CNY", "to_currency": "USD", "sell_amount": 0}),
    ("/v1/wallet/conversions", {"quote": f"bud_{FAKE}"}),
    ("/v1/wallet/conversions", {"quote": f"fxq_{FAKE}"}),
    ("/v1/wallet/conversions", {"quote": "fxq_" + "x" * 60}),
    ("/v1/wallet/conversions", {"quote": None}),
    ("/v1/wallet/conversions", {"quote": "fxq_" + FAKE, "sell_amount": 1}),
    (f"/v1/wallet/notifications/bud_{FAKE}/read", {}),
    (f"/v1/wallet/notifications/ntf_{FAKE}/read", {}),
    ("/v1/wallet/notifications/ntf_%00/read", {}),
    (f"/v1/wallet/risk_challenges/ntf_{FAKE}/verify", {"code": "123456"}),
    (f"/v1/wallet/payments/bud_{FAKE}/confirm", {}),
    (f"/v1/wallet/payments/pay_{FAKE}/pay", {}),
)


async def test_r37_bad_wallet_bodies_are_4xx_with_a_code_and_change_nothing(world: World) -> None:
    await _rate(world)
    h = await world.holder(top_up=10_000)
    bad = []
    for path, body in BAD_WALLET_BODIES:
        status, answer, _ = await _req(world, "POST", path, h.headers, body, str(uuid.uuid4()))
        if not (400 <= status < 500 and isinstance(answer, dict) and answer.get("error", {}).get("code")):
            bad.append((path, body, status, answer))
    assert not bad, bad
    assert await _balances(world, h) == {"CNY": 10_000}
    assert (await world.call("GET", "/v1/wallet/budgets", headers=h.headers))["data"] == []
    for path in ("/v1/wallet/insights?month=2026-13", "/v1/wallet/insights?month=2026-00",
                 "/v1/wallet/insights?month=20261", "/v1/wallet/insights?month=2026-12-01",
                 "/v1/wallet/insights?currency=US", "/v1/wallet/insights?month=+2026-01",
                 "/v1/wallet/insights?month=2026-%EF%BC%91%EF%BC%92", "/v1/wallet/insights?month=10000-01"):
        resp = await world.client.get(path, headers=h.headers)
        body = await resp.json()
        assert resp.status == 400 and body["error"]["param"] in ("month", "currency"), (path, resp.status, body)
    for bad_id in (f"ntf_{FAKE}", "bud_x", "bud_" + "g" * 32, "%20"):
        resp = await world.client.delete(f"/v1/wallet/budgets/{bad_id}", headers=h.headers)
        assert resp.status == 404, (bad_id, resp.status, await resp.text())


BAD_OPERATOR_BODIES: tuple[tuple[str, Any], ...] = (
    ("/v1/operator/campaigns", _campaign_body(fixed_amount=1.5)),
    ("/v1/operator/campaigns", _campaign_body(budget=2**63)),
    ("/v1/operator/campaigns", _campaign_body(budget=10.0)),
    ("/v1/operator/campaigns", _campaign_body(currency="ZZZ")),
    ("/v1/operator/campaigns", _campaign_body(unknown_field=1)),
    ("/v1/operator/campaigns", _campaign_body(time_zone="Mars/Olympus")),
    ("/v1/operator/fx_rates", {"base": "USD", "quote": "CNY", "rate": "7.1", "spread_bps": 1.5}),
    ("/v1/operator/fx_rates", {"base": "USD", "quote": "CNY", "rate": "7.1", "spread_bps": 2**63}),
    ("/v1/operator/fx_rates", {"base": "USD", "quote": "CNY", "rate": "9" * 40}),
    ("/v1/operator/fx_rates", {"base": "USD", "quote": "CNY", "rate": "NaN"}),
    ("/v1/operator/fx_rates", {"base": "USD", "quote": "CNY", "rate": "Infinity"}),
    ("/v1/operator/fx_rates", {"base": "USD", "quote": "CNY", "rate": "7.1", "colour": "red"}),
    ("/v1/operator/fx_rates", {"base": "XTS", "quote": "CNY", "rate": "7.1"}),
    ("/v1/operator/risk_rules", {"kind": "blocked_wallet", "wallet": f"mer_{FAKE}"}),
    ("/v1/operator/risk_rules", {"kind": "blocked_wallet", "wallet": "wh_zz"}),
    ("/v1/operator/risk_rules", {"kind": "blocked_wallet", "wallet": 5}),
    ("/v1/operator/risk_rules", {"kind": "nonsense"}),
)


async def test_r37_bad_operator_bodies_are_4xx_with_a_code(world: World) -> None:
    bad = []
    for path, body in BAD_OPERATOR_BODIES:
        status, answer, _ = await _req(world, "POST", path, world.ops, body, str(uuid.uuid4()))
        if not (400 <= status < 500 and isinstance(answer, dict) and answer.get("error", {}).get("code")):
            bad.append((path, body, status, answer))
    assert not bad, bad
    assert (await world.call("GET", "/v1/operator/campaigns", headers=world.ops))["data"] == []
    assert (await world.call("GET", "/v1/operator/fx_rates", headers=world.ops))["data"] == []
    assert (await world.call("GET", "/v1/operator/risk_rules", headers=world.ops))["data"] == []


async def test_r37_operator_only_routes_refuse_merchant_device_less_and_wallet_tokens(world: World) -> None:
    m = await world.merchant()
    h = await world.holder()
    routes = (("POST", f"/v1/operator/campaigns/cmp_{FAKE}/end"), ("GET", f"/v1/operator/campaigns/cmp_{FAKE}"),
              ("GET", f"/v1/operator/campaigns/cmp_{FAKE}/gifts"), ("POST", f"/v1/operator/risk_rules/rsk_{FAKE}/disable"),
              ("GET", "/v1/operator/risk_rules"), ("POST", "/v1/operator/settlement_runs"),
              ("POST", f"/v1/operator/payouts/po_{FAKE}/mark_paid"), ("POST", "/v1/merchants"),
              ("GET", "/v1/merchants"), ("POST", f"/v1/merchants/{m.id}/stores"),
              ("POST", f"/v1/merchants/{m.id}/terminals"), ("POST", f"/v1/merchants/{m.id}/api_keys"),
              ("POST", f"/v1/merchants/{m.id}/suspend"), ("POST", f"/v1/operator/merchants/{m.id}/settlement"),
              ("POST", f"/v1/operator/merchants/{m.id}/payout_account"), ("POST", "/v1/operator/bank_statements"),
              ("GET", "/v1/operator/reconciliation/exceptions"), ("POST", f"/v1/operator/wallet_holders/{h.id}/unlock"))
    bad = []
    for method, path in routes:
        for headers in (m.headers, auth(m.publishable), h.headers):
            resp = await world.client.request(method, path, headers=headers, json={} if method == "POST" else None)
            if resp.status not in (401, 403):
                bad.append((method, path, resp.status, await resp.text()))
    assert not bad, bad

"""API polish (issue 11): refusal codes, the unlock answer, metadata, list filters and pagination."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg

from gateway.domain.ids import Kind, decode
from tests.integration.test_settlement import D0, at, captured, run
from tests.integration.world import World


async def test_refunding_unpaid_or_uncaptured_is_the_same_409(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=5_000)
    unpaid = await world.payment(m, 1_000)
    refused = await world.call("POST", f"/v1/payments/{unpaid['id']}/refunds", 409, headers=m.headers, json={})
    assert (refused["error"]["code"], refused["error"]["status_now"]) == ("payment_not_refundable",
                                                                          "requires_payment_method")
    held = await world.payment(m, 1_000, capture_method="manual")
    await world.pay(h, held["id"])
    uncaptured = await world.call("POST", f"/v1/payments/{held['id']}/refunds", 409, headers=m.headers, json={})
    assert (uncaptured["error"]["code"], uncaptured["error"]["status_now"]) == ("payment_not_refundable",
                                                                                "requires_capture")


async def test_unlock_answers_the_holders_real_pin_and_lock_state(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=500_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": "135790"})
    p = await world.payment(m, 100_001)
    for _ in range(4):
        await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay", 402, headers=h.headers, json={"pin": "000001"})
    await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay", 403, headers=h.headers, json={"pin": "000001"})
    assert (await world.call("GET", "/v1/wallet", headers=h.headers))["holder"]["payments_locked"] is True
    unlocked = await world.call("POST", f"/v1/operator/wallet_holders/{h.id}/unlock", headers=world.ops, json={})
    assert (unlocked["pin_set"], unlocked["payments_locked"]) == (True, False)
    no_pin = await world.holder()
    answer = await world.call("POST", f"/v1/operator/wallet_holders/{no_pin.id}/unlock", headers=world.ops, json={})
    assert (answer["pin_set"], answer["payments_locked"]) == (False, False)
    tiered = await world.call("POST", f"/v1/operator/wallet_holders/{h.id}/tier", headers=world.ops, json={"tier": 2})
    assert (tiered["pin_set"], tiered["payments_locked"]) == (True, False)


async def _all(world: World, path: str, headers: dict[str, str]) -> list[str]:
    sep = "&" if "?" in path else "?"
    page = await world.call("GET", f"{path}{sep}limit=100", headers=headers)
    assert not page["has_more"]
    return [x["id"] for x in page["data"]]


async def walk(world: World, path: str, headers: dict[str, str], insert: Callable[[], Awaitable[Any]] | None = None,
               ) -> list[str]:
    """Walks ``path`` two at a time with starting_after, an object inserted before each next page, then back
    from the oldest with ending_before: every object is seen once, newest first, none twice."""
    sep = "&" if "?" in path else "?"
    before_walk = await _all(world, path, headers)
    assert len(before_walk) >= 3, before_walk
    seen: list[str] = []
    cursor = ""
    inserted = 0
    while True:
        page = await world.call("GET", f"{path}{sep}limit=2{cursor}", headers=headers)
        seen += [x["id"] for x in page["data"]]
        if not page["has_more"]:
            break
        cursor = f"&starting_after={page['data'][-1]['id']}"
        if insert is not None:
            await insert()  # newer than the whole walk: never on a later page
            inserted += 1
    assert seen == before_walk
    now = await _all(world, path, headers)
    assert len(now) > len(before_walk) if inserted else len(now) == len(before_walk)
    assert now[len(now) - len(before_walk):] == before_walk
    back: list[str] = []
    cursor = f"&ending_before={now[-1]}"
    while True:
        page = await world.call("GET", f"{path}{sep}limit=2{cursor}", headers=headers)
        back = [x["id"] for x in page["data"]] + back
        if not page["has_more"]:
            break
        cursor = f"&ending_before={page['data'][0]['id']}"
    assert back == now[:-1]
    return seen


async def test_every_list_walks_each_object_once_under_inserts(world: World) -> None:
    m = await world.merchant("Walker")
    h = await world.holder(top_up=100_000)
    for amount in (100, 200, 300, 400):
        await world.payment(m, amount)
    await walk(world, "/v1/payments", m.headers, lambda: world.payment(m, 50))
    paid = await world.payment(m, 10_000)
    await world.pay(h, paid["id"])

    async def refund() -> Any:
        return await world.call("POST", f"/v1/payments/{paid['id']}/refunds", 201, headers=m.headers,
                                json={"amount": 100})

    for _ in range(3):
        await refund()
    await walk(world, "/v1/refunds", m.headers, refund)
    await walk(world, f"/v1/payments/{paid['id']}/refunds", m.headers, refund)
    for name in ("Second", "Third"):
        await world.merchant(name)
    await walk(world, "/v1/merchants", world.ops, lambda: world.merchant("Newer"))

    async def key() -> Any:
        return await world.call("POST", f"/v1/merchants/{m.id}/api_keys", 201, headers=world.ops,
                                json={"kind": "publishable"})

    await key()
    await walk(world, f"/v1/merchants/{m.id}/api_keys", m.headers, key)
    await walk(world, "/v1/events", m.headers, lambda: world.payment(m, 60))

    async def endpoint() -> Any:
        return await world.call("POST", "/v1/webhook_endpoints", 201, headers=m.headers,
                                json={"url": "https://example.com/hook", "enabled_events": ["*"]})

    for _ in range(3):
        await endpoint()
    await walk(world, "/v1/webhook_endpoints", m.headers, endpoint)
    hook = (await world.call("GET", "/v1/webhook_endpoints?limit=1", headers=m.headers))["data"][0]["id"]
    for amount in (70, 80, 90):  # each event is a (pending) delivery to every endpoint
        await world.payment(m, amount)
    await walk(world, f"/v1/webhook_endpoints/{hook}/deliveries", m.headers, lambda: world.payment(m, 95))
    await walk(world, "/v1/wallet/transactions", h.headers, lambda: world.top_up(h, 1))

    numbers = iter(range(6222020200112233500, 6222020200112233600))

    async def bank_account() -> Any:  # a new number each time (a known one is the same account again)
        return await world.call("POST", "/v1/wallet/bank_accounts", 201, headers=h.headers,
                                json={"bank_name": "ICBC", "account_number": str(next(numbers))})

    for _ in range(2):
        await bank_account()
    await walk(world, "/v1/wallet/bank_accounts", h.headers, bank_account)


async def test_a_cursor_of_another_tenant_or_list_is_refused(world: World) -> None:
    a, b = await world.merchant("A"), await world.merchant("B")
    theirs = await world.payment(b, 100)
    mine = await world.payment(a, 100)
    for path, param in ((f"/v1/payments?starting_after={theirs['id']}", "starting_after"),
                        (f"/v1/payments?ending_before={theirs['id']}", "ending_before"),
                        (f"/v1/refunds?starting_after={mine['id']}", "starting_after"),
                        (f"/v1/merchants/{a.id}/api_keys?starting_after={mine['id']}", "starting_after"),
                        (f"/v1/payments?starting_after={mine['id']}&ending_before={mine['id']}", "ending_before")):
        refused = await world.call("GET", path, 400, headers=a.headers)
        assert (refused["error"]["code"], refused["error"]["param"]) == ("invalid_cursor", param), path


async def test_metadata_limits_are_refused_naming_the_pair(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=1_000)
    paid = await world.payment(m, 500)
    await world.pay(h, paid["id"])
    too_many = {f"k{i}": "v" for i in range(51)}
    cases: list[tuple[Any, str, str]] = [
        (too_many, "metadata_too_many_keys", "metadata"),
        ({"k" * 41: "v"}, "metadata_key_invalid", f"metadata[{'k' * 41}]"),
        ({"": "v"}, "metadata_key_invalid", "metadata[]"),
        ({"a[b]": "v"}, "metadata_key_invalid", "metadata[a[b]]"),
        ({"order_id": "v" * 501}, "metadata_value_too_long", "metadata[order_id]"),
        ({"order_id": 123}, "metadata_value_not_string", "metadata[order_id]"),
        ({"order_id": {"nested": "x"}}, "metadata_value_not_string", "metadata[order_id]"),
    ]
    for pairs, code, param in cases:
        for path, body in (("/v1/payments", {"amount": 100, "currency": "CNY", "metadata": pairs}),
                           (f"/v1/payments/{paid['id']}/refunds", {"amount": 1, "metadata": pairs}),
                           (f"/v1/payments/{paid['id']}", {"metadata": pairs})):
            refused = await world.call("POST", path, 400, headers=m.headers, json=body)
            assert (refused["error"]["code"], refused["error"]["param"]) == (code, param), (path, pairs)
    not_object = await world.call("POST", "/v1/payments", 400, headers=m.headers,
                                  json={"amount": 100, "currency": "CNY", "metadata": ["a"]})
    assert not_object["error"]["param"] == "metadata"
    at_limits = {f"{i:02d}" + "k" * 38: "v" * 500 for i in range(50)}
    kept = await world.payment(m, 100, metadata=at_limits)
    assert kept["metadata"] == at_limits


async def test_metadata_is_returned_updated_and_searched_within_the_merchant(world: World) -> None:
    a, b = await world.merchant("A"), await world.merchant("B")
    h = await world.holder(top_up=10_000)
    first = await world.payment(a, 1_000, metadata={"order_id": "123", "channel": "web"})
    await world.payment(a, 1_000, metadata={"order_id": "124", "channel": "web"})
    plain = await world.payment(a, 1_000)
    assert plain["metadata"] == {}
    theirs = await world.payment(b, 1_000, metadata={"order_id": "123", "channel": "web"})
    assert first["metadata"] == {"order_id": "123", "channel": "web"}
    got = await world.call("GET", f"/v1/payments/{first['id']}", headers=a.headers)
    assert got["metadata"] == first["metadata"]
    found = await world.call("GET", "/v1/payments?metadata[order_id]=123", headers=a.headers)
    assert [p["id"] for p in found["data"]] == [first["id"]]
    both = await world.call("GET", "/v1/payments?metadata[channel]=web&metadata[order_id]=124", headers=a.headers)
    assert [p["metadata"]["order_id"] for p in both["data"]] == ["124"]
    web = await world.call("GET", "/v1/payments?metadata[channel]=web", headers=a.headers)
    assert len(web["data"]) == 2 and theirs["id"] not in {p["id"] for p in web["data"]}
    for query in ("metadata[order_id]=12", "metadata[order_id]=", "metadata[nothing]=123"):
        assert (await world.call("GET", f"/v1/payments?{query}", headers=a.headers))["data"] == [], query
    b_sees = await world.call("GET", "/v1/payments?metadata[order_id]=123", headers=b.headers)
    assert [p["id"] for p in b_sees["data"]] == [theirs["id"]]

    updated = await world.call("POST", f"/v1/payments/{first['id']}", headers=a.headers,
                               json={"metadata": {"channel": "", "note": "gift"}})
    assert updated["metadata"] == {"order_id": "123", "note": "gift"}
    assert (await world.call("GET", "/v1/payments?metadata[channel]=web", headers=a.headers))["data"][0]["id"] != (
        first["id"])
    other = await world.call("POST", f"/v1/payments/{theirs['id']}", 404, headers=a.headers, json={"metadata": {}})
    assert other["error"]["code"] == "resource_missing"

    await world.pay(h, first["id"])
    refund = await world.call("POST", f"/v1/payments/{first['id']}/refunds", 201, headers=a.headers,
                              json={"amount": 100, "metadata": {"reason_code": "R1"}})
    assert refund["metadata"] == {"reason_code": "R1"}
    await world.call("POST", f"/v1/payments/{first['id']}/refunds", 201, headers=a.headers, json={"amount": 100})
    refunds = await world.call("GET", "/v1/refunds?metadata[reason_code]=R1", headers=a.headers)
    assert [r["id"] for r in refunds["data"]] == [refund["id"]]
    assert (await world.call("GET", "/v1/refunds?metadata[reason_code]=R1", headers=b.headers))["data"] == []
    events = await world.call("GET", f"/v1/events?payment={first['id']}&type=payment.succeeded", headers=a.headers)
    assert events["data"][0]["data"]["object"]["metadata"] == {"order_id": "123", "note": "gift"}


async def test_a_retry_with_other_metadata_under_the_same_key_is_a_conflict(world: World) -> None:
    m = await world.merchant()
    headers = {**m.headers, "Idempotency-Key": "order-77"}
    body = {"amount": 700, "currency": "CNY", "metadata": {"order_id": "77"}}
    made = await world.call("POST", "/v1/payments", 201, headers=headers, json=body)
    replay = await world.call("POST", "/v1/payments", 201, headers=headers, json=body)
    assert replay["id"] == made["id"]
    changed = await world.call("POST", "/v1/payments", 422, headers=headers,
                               json={**body, "metadata": {"order_id": "78"}})
    assert changed["error"]["type"] == "idempotency_error"


async def test_created_and_status_filters_at_their_boundaries(world: World, clean_db: str) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    made = [await world.payment(m, 100 + i) for i in range(3)]
    await world.pay(h, made[1]["id"])
    t0 = 1_800_000_000
    conn = await asyncpg.connect(clean_db)
    try:  # whole seconds apart, exactly on the boundaries the filters name
        for i, p in enumerate(made):
            await conn.execute("UPDATE payments SET created_at = to_timestamp($2) WHERE id = $1",
                               decode(Kind.PAYMENT, p["id"]), t0 + i)
    finally:
        await conn.close()
    ids = [p["id"] for p in made]

    async def listed(query: str) -> list[str]:
        return [p["id"] for p in (await world.call("GET", f"/v1/payments?{query}", headers=m.headers))["data"]]

    assert await listed(f"created[gte]={t0 + 1}") == [ids[2], ids[1]]
    assert await listed(f"created[lt]={t0 + 1}") == [ids[0]]
    assert await listed(f"created[gte]={t0 + 1}&created[lt]={t0 + 2}") == [ids[1]]
    assert await listed(f"created[gte]={t0 + 3}") == []
    assert await listed("status=succeeded") == [ids[1]]
    assert await listed(f"status=requires_payment_method&created[lt]={t0 + 3}") == [ids[2], ids[0]]
    bad = await world.call("GET", "/v1/payments?status=paid", 400, headers=m.headers)
    assert bad["error"]["param"] == "status"
    bad = await world.call("GET", "/v1/payments?created[gte]=yesterday", 400, headers=m.headers)
    assert bad["error"]["param"] == "created[gte]"
    page = await world.call("GET", f"/v1/payments?created[lt]={t0 + 3}&limit=1&starting_after={ids[2]}",
                            headers=m.headers)
    assert ([p["id"] for p in page["data"]], page["has_more"]) == ([ids[1]], True)

    await world.call("POST", f"/v1/payments/{ids[1]}/refunds", 201, headers=m.headers, json={"amount": 10})
    refunds = await world.call("GET", "/v1/refunds?status=succeeded&created[gte]=0", headers=m.headers)
    assert [r["payment"] for r in refunds["data"]] == [ids[1]]
    assert (await world.call("GET", f"/v1/refunds?created[gte]={t0}", headers=m.headers))["data"] == []


async def test_settlement_batches_and_payouts_walk_once_each(world: World, clean_db: str) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    conn = await asyncpg.connect(clean_db)
    try:
        for day in range(4):
            await captured(world, conn, m, h, 1_000 + day, at(D0 + timedelta(days=day), 9))
            await run(world, D0 + timedelta(days=day))
    finally:
        await conn.close()
    batches = await walk(world, "/v1/settlement_batches", m.headers)
    assert len(batches) == 4
    assert len(await walk(world, "/v1/payouts", m.headers)) == 4


async def test_payments_waiting_for_the_pin_walk_once_each(world: World) -> None:
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=600_000)
    await world.call("POST", f"/v1/operator/wallet_holders/{h.id}/tier", headers=world.ops, json={"tier": 4})
    session = {"token": await world.sign_in(h.phone, device_id="phone-A1")}
    phone = {"Authorization": f"Bearer {session['token']}"}
    await world.call("POST", "/v1/wallet/pin", headers=phone, json={"pin": "246810"})

    async def charge() -> Any:  # above the PIN threshold: waits for the payer's PIN
        code = (await world.call("POST", "/v1/wallet/pay_codes", 201, headers=phone, json={}))["code"]
        charged = await world.call("POST", "/v1/pay_code_charges", 201, headers=m.headers,
                                   json={"pay_code": code, "amount": 100_001, "currency": "CNY",
                                         "metadata": {"lane": "3"}})
        assert (charged["status"], charged["metadata"]) == ("requires_action", {"lane": "3"})
        return charged

    for _ in range(3):
        await charge()
    await walk(world, "/v1/wallet/pending_payments", phone, charge)

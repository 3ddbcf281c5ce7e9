"""The demo of a checkout day: from an empty database to settled payments, over real HTTP.

It creates a fresh ``<database>_demo`` database, starts the gateway in this process, plays an
operator, a merchant and two wallet holders through the public API, prints balances, events and
the ledger proof, and leaves the gateway running with its URLs printed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
from aiohttp import web

from gateway import logs
from gateway.app import create_app
from gateway.services import tenants
from gateway.services.context import Services
from gateway.settings import Settings
from gateway.store import db

OPERATOR = ("ops@demo.example", "demo-operator-pass")


def _demo_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "_demo"))


def money(amount: int) -> str:
    return f"{amount // 100}.{amount % 100:02d}"


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def call(self, method: str, path: str, token: str | None = None, body: Any = None,
                   key: str | None = None, expect: int | None = None) -> tuple[int, Any, dict[str, str]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if key:
            headers["Idempotency-Key"] = key
        async with self.session.request(method, self.base + path, json=body, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=10)) as resp:
            data = await resp.json()
            if expect is not None and resp.status != expect:
                raise RuntimeError(f"{method} {path} -> {resp.status}: {data}")
            return resp.status, data, dict(resp.headers)


def step(text: str) -> None:
    print(f"\n== {text}")


async def play(c: Client) -> None:
    step("Operator logs in (created from the command line)")
    _, op, _ = await c.call("POST", "/v1/operator/sessions", body={"email": OPERATOR[0], "password": OPERATOR[1]}, expect=201)
    ops = op["token"]
    print(f"   operator JWT issued, valid {op['expires_in']} s")

    step("Operator onboards a merchant with a store, a terminal and API keys")
    _, merchant, _ = await c.call("POST", "/v1/merchants", ops, {"name": "Lanzhou Noodle House", "mcc": "5812",
                                  "country": "CN", "city": "Beijing", "fee_bps": 60}, key=str(uuid.uuid4()), expect=201)
    mid = merchant["id"]
    _, store, _ = await c.call("POST", f"/v1/merchants/{mid}/stores", ops, {"name": "Wangfujing", "city": "Beijing"},
                               key=str(uuid.uuid4()), expect=201)
    _, terminal, _ = await c.call("POST", f"/v1/merchants/{mid}/terminals", ops,
                                  {"store": store["id"], "label": "Counter 1"}, key=str(uuid.uuid4()), expect=201)
    _, sk, _ = await c.call("POST", f"/v1/merchants/{mid}/api_keys", ops, {"kind": "secret"}, expect=201)
    secret = sk["secret"]
    print(f"   merchant {mid} ({merchant['name']}, fee {merchant['fee_bps']} bp)")
    print(f"   store {store['id']}, terminal {terminal['id']}")
    print(f"   secret key {sk['prefix']}... (shown once; stored only as a keyed hash)")

    step("Two wallet holders register, link a bank card and top up")
    holders: dict[str, str] = {}
    for name, phone, top_up in (("Alice", "+8613800000001", 20_000), ("Bob", "+8613800000002", 1_500)):
        await c.call("POST", "/v1/wallet/holders", body={"phone": phone, "password": f"{name}-wallet-pw"}, expect=201)
        _, session, _ = await c.call("POST", "/v1/wallet/sessions", body={"phone": phone, "password": f"{name}-wallet-pw"}, expect=201)
        token = session["token"]
        _, bank, _ = await c.call("POST", "/v1/wallet/bank_accounts", token,
                                  {"bank_name": "ICBC", "account_number": f"62220202001122{phone[-5:]}"}, expect=201)
        _, tr, _ = await c.call("POST", "/v1/wallet/top_ups", token, {"bank_account": bank["id"], "amount": top_up,
                                "currency": "CNY"}, key=str(uuid.uuid4()), expect=201)
        holders[name] = token
        print(f"   {name}: bank {bank['number_masked']}, topped up {money(top_up)} CNY, available {money(tr['balance_after']['available'])}")

    step("Sale 1: Alice pays 38.00 CNY (automatic capture)")
    _, p1, _ = await c.call("POST", "/v1/payments", secret, {"amount": 3_800, "currency": "CNY", "merchant_reference": "T1-0001",
                            "description": "Beef noodles x2", "store": store["id"]}, key="order-T1-0001", expect=201)
    _, paid, _ = await c.call("POST", f"/v1/wallet/payments/{p1['id']}/pay", holders["Alice"], {}, key=str(uuid.uuid4()), expect=200)
    print(f"   {p1['id']}: {paid['status']} at {paid['merchant_name']}")

    step("Idempotent retry: the merchant's create request is sent again with the same key")
    status, again, headers = await c.call("POST", "/v1/payments", secret, {"amount": 3_800, "currency": "CNY",
                                          "merchant_reference": "T1-0001", "description": "Beef noodles x2",
                                          "store": store["id"]}, key="order-T1-0001")
    print(f"   HTTP {status}, same payment {again['id'] == p1['id']}, Idempotent-Replayed: {headers.get('Idempotent-Replayed')}")

    step("Sale 2: Alice pays 120.00 CNY with manual capture; the merchant captures 100.00")
    _, p2, _ = await c.call("POST", "/v1/payments", secret, {"amount": 12_000, "currency": "CNY", "capture_method": "manual",
                            "merchant_reference": "T1-0002"}, key="order-T1-0002", expect=201)
    await c.call("POST", f"/v1/wallet/payments/{p2['id']}/pay", holders["Alice"], {}, key=str(uuid.uuid4()), expect=200)
    _, cap, _ = await c.call("POST", f"/v1/payments/{p2['id']}/capture", secret, {"amount_to_capture": 10_000},
                             key=str(uuid.uuid4()), expect=200)
    print(f"   {p2['id']}: {cap['status']}, received {money(cap['amount_received'])}, fee {money(cap['fee'])}; 20.00 released")

    step("Partial refund of 15.00 CNY on sale 2")
    _, refund, _ = await c.call("POST", f"/v1/payments/{p2['id']}/refunds", secret, {"amount": 1_500, "reason": "cold soup"},
                                key=str(uuid.uuid4()), expect=201)
    print(f"   {refund['id']}: {money(refund['amount'])} back to Alice, fee returned {money(refund['fee_returned'])}")

    step("Sale 3: Bob tries to pay 25.00 CNY with 15.00 in his wallet")
    _, p3, _ = await c.call("POST", "/v1/payments", secret, {"amount": 2_500, "currency": "CNY"}, key="order-T1-0003", expect=201)
    status, declined, _ = await c.call("POST", f"/v1/wallet/payments/{p3['id']}/pay", holders["Bob"], {}, key=str(uuid.uuid4()))
    print(f"   HTTP {status}: {declined['error']['code']} - {declined['error']['message']}")

    step("Balances")
    for name, token in holders.items():
        _, w, _ = await c.call("GET", "/v1/wallet", token, expect=200)
        for b in w["balances"]:
            print(f"   {name:6} {b['currency']} available {money(b['available']):>8}  held {money(b['held']):>6}")
    _, bal, _ = await c.call("GET", "/v1/balance", secret, expect=200)
    for b in bal["balances"]:
        print(f"   merchant {b['currency']} receivable {money(b['total'])}")

    step("Events (newest first)")
    _, events, _ = await c.call("GET", "/v1/events?limit=20", secret, expect=200)
    for e in events["data"]:
        obj = e["data"]["object"]
        print(f"   {e['created_at'][11:23]}  {e['type']:<20} {obj['id']}  {obj.get('status', '')}")

    step("Ledger invariant check")
    _, report, _ = await c.call("GET", "/v1/operator/ledger/invariants", ops, expect=200)
    print("   OK: every entry balances, balances equal their postings, no wallet negative,"
          " holds match authorisations, captured payments have exactly their postings"
          if report["ok"] else f"   BROKEN: {json.dumps(report['violations'])}")
    if not report["ok"]:
        raise RuntimeError("ledger invariants broken")


async def main(settings: Settings, *, wait: bool) -> int:
    logs.configure("WARNING")
    url = _demo_url(settings.database.url)
    admin_url, name = db._admin_url(url)
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
    await db.migrate(url)
    demo_settings = dataclasses.replace(settings, database=dataclasses.replace(settings.database, url=url))
    print(f"Fresh database {name} created and migrated.")
    svc = await Services.start(demo_settings)
    try:
        await tenants.create_operator(svc, OPERATOR[0], OPERATOR[1], "admin")
    finally:
        await svc.stop()
    runner = web.AppRunner(create_app(demo_settings), access_log=None)
    await runner.setup()
    host, port = demo_settings.server.host, demo_settings.server.port
    await web.TCPSite(runner, host, port).start()
    base = f"http://{host}:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await play(Client(session, base))
        print(f"\nThe gateway is running at {base}")
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            print(f"   {base}{path}")
        print(f"   operator login: POST {base}/v1/operator/sessions {{\"email\": \"{OPERATOR[0]}\", \"password\": \"{OPERATOR[1]}\"}}")
        if wait:
            print("Press Ctrl-C to stop.")
            await asyncio.Event().wait()
    finally:
        await runner.cleanup()
    return 0

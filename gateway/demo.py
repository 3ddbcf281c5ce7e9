"""The demo of a checkout day: from an empty database to settled payments, over real HTTP.

It creates a fresh ``<database>_demo`` database, starts the gateway in this process, plays an
operator, a merchant and two wallet holders through the public API, prints balances, events and
the ledger proof, and leaves the gateway running with its URLs printed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgspec
from aiohttp import web

from gateway import demo_backoffice, demo_shop, demo_wallet, logs
from gateway.app import create_app
from gateway.banksim import Movement
from gateway.settings import Settings
from gateway.smssim import SmsGatewaySim
from gateway.store import db

OPERATOR = ("ops@demo.example", "demo-operator-pass")
COUNTER_SALE_MINOR = 2_600
COUNTER_TOP_UP_MINOR = 30_000  # room for the counter sale, the wallet extras and the web shop
COUNTER_TIMEOUT_S = 90.0
COUNTER_STOP_S = 40.0
COUNTER_PHONE_DEVICE = "counter-demo-phone"  # pos_agent.counter_demo.PHONE_DEVICE_ID (never imported here)  # the counter demo stops its agent and phone (each bounded) before it exits


_BANK_DIRECTIONS = {"/v1/wallet/top_ups": "CRDT", "/v1/wallet/withdrawals": "DBIT"}


def _demo_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "_demo"))


def money(amount: int) -> str:
    return f"{amount // 100}.{amount % 100:02d}"


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str, sms: SmsGatewaySim) -> None:
        self.session, self.base, self.sms = session, base, sms
        self.bank: list[Movement] = []  # what the gateway's bank account sees: the simulated bank books these

    async def download(self, path: str, token: str, target: Path) -> Path:
        async with self.session.get(self.base + path, headers={"Authorization": f"Bearer {token}"},
                                    timeout=aiohttp.ClientTimeout(total=10)) as resp:
            resp.raise_for_status()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(await resp.read())
        return target.resolve()

    async def answer(self, phone: str, challenge: dict[str, Any]) -> str:
        """Read the code texted to the phone (the SMS gateway simulator) and enter it: the wallet token."""
        code = await self.sms.code(phone, challenge["id"])
        _, verified, _ = await self.call("POST", f"/v1/wallet/challenges/{challenge['id']}/verify",
                                         body={"code": code}, expect=201)
        return str(verified["token"])

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
            if method == "POST" and path in _BANK_DIRECTIONS and resp.status == 201:
                self.bank.append(Movement(data["id"], _BANK_DIRECTIONS[path], data["amount"], datetime.now(UTC).date()))
            return resp.status, data, dict(resp.headers)


def step(text: str) -> None:
    print(f"\n== {text}")


async def play(c: Client, out_dir: Path) -> None:
    step("Operator logs in (created from the command line)")
    _, op, _ = await c.call("POST", "/v1/operator/sessions", body={"email": OPERATOR[0], "password": OPERATOR[1]}, expect=201)
    ops = op["token"]
    print(f"   operator JWT issued, valid {op['expires_in']} s")

    step("Operator onboards a merchant with a store, a terminal and API keys")
    _, merchant, _ = await c.call("POST", "/v1/merchants", ops, {"name": "Lanzhou Noodle House", "mcc": "5812",
                                  "country": "CN", "city": "Beijing", "fee_bps": 60, "name_local": "兰州拉面馆",
                                  "city_local": "北京", "language_local": "zh"}, key=str(uuid.uuid4()), expect=201)
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

    step("Promotions: the bank gives 8.88 CNY with each wallet holder's first payment (100 places)")
    gift_campaign = await demo_wallet.first_payment_gift(c.call, ops, money)

    step("Two wallet holders register on their phones (a code proves each phone), link a bank card and top up")
    holders: dict[str, str] = {}
    for name, phone, top_up in (("Alice", "+8613800000001", 20_000), ("Bob", "+8613800000002", 1_500)):
        _, reg, _ = await c.call("POST", "/v1/wallet/holders", body={"phone": phone, "password": f"{name}-wallet-pw",
                                 "device_id": f"{name.lower()}-phone"}, expect=201)
        token = await c.answer(phone, reg["challenge"])
        print(f"   {name}: code texted to {reg['challenge']['phone_masked']} (SMS gateway simulator), entered:"
              " phone verified, tier 4, device trusted")
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
    await demo_wallet.show_gift(c.call, ops, holders["Alice"], gift_campaign, money)

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

    step("Scan-to-pay: the counter shows a dynamic QR code for 58.00 CNY; Alice's wallet scans it")
    _, p4, _ = await c.call("POST", "/v1/payments", secret, {"amount": 5_800, "currency": "CNY", "merchant_reference": "T1-0004",
                            "description": "Lamb noodles"}, key="order-T1-0004", expect=201)
    _, qr, _ = await c.call("POST", f"/v1/payments/{p4['id']}/qr_codes", secret, {"ttl": 300, "terminal_label": "Counter 1"},
                            key=str(uuid.uuid4()), expect=201)
    png_path = await c.download(qr["image_png"], secret, out_dir / f"qr-{p4['id']}.png")
    print(f"   payload: {qr['payload']}")
    print(f"   image:   {png_path}  (valid until {qr['expires_at'][11:19]} UTC)")
    _, preview, _ = await c.call("POST", "/v1/wallet/qr/preview", holders["Alice"], {"payload": qr["payload"]}, expect=200)
    print(f"   Alice's wallet shows: {preview['merchant_name']} / {preview['merchant_name_local']},"
          f" {money(preview['amount'])} {preview['currency']}")
    _, qr_paid, _ = await c.call("POST", "/v1/wallet/qr/pay", holders["Alice"], {"payload": qr["payload"]},
                                 key=str(uuid.uuid4()), expect=200)
    status, used, _ = await c.call("POST", "/v1/wallet/qr/pay", holders["Bob"], {"payload": qr["payload"]}, key=str(uuid.uuid4()))
    print(f"   {qr_paid['id']}: {qr_paid['status']}; Bob scanning the same code: HTTP {status} {used['error']['code']}")

    step("Pay-code: Bob's wallet shows an 18-digit one-time code; the counter scans it and charges 12.00 CNY")
    _, bob_session, _ = await c.call("POST", "/v1/wallet/sessions", body={"phone": "+8613800000002",
                                     "password": "Bob-wallet-pw", "device_id": "bob-phone"}, expect=201)
    _, code, _ = await c.call("POST", "/v1/wallet/pay_codes", bob_session["token"], {}, expect=201)
    print(f"   code {code['code'][:4]}{'*' * 10}{code['code'][-4:]} valid until {code['expires_at'][11:19]} UTC")
    _, charged, _ = await c.call("POST", "/v1/pay_code_charges", secret, {"pay_code": code["code"], "amount": 1_200,
                                 "currency": "CNY", "merchant_reference": "T1-0005"}, key="order-T1-0005", expect=201)
    print(f"   {charged['id']}: {charged['status']} by {charged['channel']}")

    step("A large pay-code charge (1,500.00 CNY) waits for Alice's payment PIN")
    _, alice_session, _ = await c.call("POST", "/v1/wallet/sessions", body={"phone": "+8613800000001",
                                       "password": "Alice-wallet-pw", "device_id": "alice-phone"}, expect=201)
    alice = alice_session["token"]
    await c.call("POST", "/v1/wallet/pin", alice, {"pin": "246810"}, expect=200)
    _, banks, _ = await c.call("GET", "/v1/wallet/bank_accounts", alice, expect=200)
    await c.call("POST", "/v1/wallet/top_ups", alice, {"bank_account": banks["data"][0]["id"], "amount": 150_000,
                 "currency": "CNY"}, key=str(uuid.uuid4()), expect=201)
    _, big_code, _ = await c.call("POST", "/v1/wallet/pay_codes", alice, {}, expect=201)
    _, waiting, _ = await c.call("POST", "/v1/pay_code_charges", secret, {"pay_code": big_code["code"], "amount": 150_000,
                                 "currency": "CNY", "merchant_reference": "T1-0006"}, key="order-T1-0006", expect=201)
    print(f"   counter sees {waiting['status']} (held {money(waiting['amount'])}), confirm by {waiting['confirm_by'][11:19]} UTC")
    status, wrong, _ = await c.call("POST", f"/v1/wallet/payments/{waiting['id']}/confirm", alice, {"pin": "000001"},
                                    key=str(uuid.uuid4()))
    print(f"   wrong PIN: HTTP {status} {wrong['error']['code']}, {wrong['error']['attempts_remaining']} attempts left")
    await c.call("POST", f"/v1/wallet/payments/{waiting['id']}/confirm", alice, {"pin": "246810"}, key=str(uuid.uuid4()),
                 expect=200)
    _, polled, _ = await c.call("GET", f"/v1/payments/{waiting['id']}", secret, expect=200)
    print(f"   right PIN; the counter polls: {polled['status']}")

    step("Verification tier caps: Bob (tier 4) tries to top up beyond his wallet's 10,000.00 CNY cap")
    _, bob_banks, _ = await c.call("GET", "/v1/wallet/bank_accounts", holders["Bob"], expect=200)
    status, capped, _ = await c.call("POST", "/v1/wallet/top_ups", holders["Bob"], {"bank_account": bob_banks["data"][0]["id"],
                                     "amount": 1_000_000, "currency": "CNY"}, key=str(uuid.uuid4()))
    print(f"   HTTP {status} {capped['error']['code']}: {capped['error']['limit']} = {money(capped['error']['limit_amount'])}")

    step("Counter sale by NFC tap: POS agent, cash register, phone, display and printer (all simulated)")
    _, wallet, _ = await c.call("GET", "/v1/wallet", alice, expect=200)
    left = next(b["available"] for b in wallet["balances"] if b["currency"] == "CNY")
    _, topped, _ = await c.call("POST", "/v1/wallet/top_ups", alice, {"bank_account": banks["data"][0]["id"],
                                "amount": COUNTER_TOP_UP_MINOR, "currency": "CNY"}, key=str(uuid.uuid4()), expect=201)
    print(f"   Alice has {money(left)} CNY left: she tops up {money(COUNTER_TOP_UP_MINOR)} first,"
          f" available {money(topped['balance_after']['available'])}")
    status, challenge, _ = await c.call("POST", "/v1/wallet/sessions", body={"phone": "+8613800000001",
                                        "password": "Alice-wallet-pw", "device_id": COUNTER_PHONE_DEVICE})
    print(f"   Alice signs in on a new phone ({COUNTER_PHONE_DEVICE}): HTTP {status} {challenge['object']}"
          f" ({challenge['reason']}); the code texted to her is entered")
    await c.answer("+8613800000001", challenge)
    await counter_sale(c.base, secret, terminal["id"], "+8613800000001", "Alice-wallet-pw", COUNTER_SALE_MINOR)

    step("Verification levels: Alice lists her devices; an operator verifies Bob's real name (tier 3)")
    _, devices, _ = await c.call("GET", "/v1/wallet/devices", alice, expect=200)
    print("   Alice's devices: " + ", ".join(f"{d['device_id']}{' (this one)' if d['current'] else ''}"
                                           for d in devices["data"]))
    _, bob_holder, _ = await c.call("GET", "/v1/wallet", holders["Bob"], expect=200)
    _, upgraded, _ = await c.call("POST", f"/v1/operator/wallet_holders/{bob_holder['holder']['id']}/verification",
                                  ops, {"level": "real_name", "reference": "ID card checked at the branch"}, expect=200)
    print(f"   Bob: {upgraded['previous_level']} -> {upgraded['holder']['verification_level']},"
          f" tier {upgraded['holder']['tier']} (audited)")

    step("Promotions: the bank pays 10% of one QR payment at the noodle house; Alice's wallet previews it")
    await demo_wallet.discounted_qr_payment(c.call, ops, secret, mid, alice, money)

    step("Currencies: the operator imports today's rates from a CSV file; Alice converts 100.00 CNY to US dollars")
    await demo_wallet.conversion(c.call, ops, alice, money)

    step("Paying abroad: a 12.50 EUR QR payment from Alice's yuan, at the quote her wallet previews; a refund in yuan")
    await demo_wallet.cross_currency_qr_payment(c.call, secret, alice, money)

    step("Budgets: Alice sets a monthly dining budget; a payment takes her past 80% and a reminder arrives")
    await demo_wallet.budget_reminder(c.call, secret, alice, money)

    step("Risk: a large payment from a tablet Alice signed in on minutes ago needs a one-time code; she and the"
         " operators are alerted")
    await demo_wallet.risk_step_up(c.call, c.answer, c.sms.code, ops, secret, "+8613800000001", "Alice-wallet-pw",
                                   money)

    step("Web shop order: the hosted checkout page, Alice's wallet pays its QR code, the shop gets a signed webhook")
    await demo_shop.order(c.call, secret, alice, out_dir, money)

    step("End of day: the merchant's day closes, is settled and paid out; the bank's statement is reconciled")
    await demo_backoffice.end_of_day(c.call, ops, secret, mid, c.bank, money)

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
        print(f"   {e['created_at'][11:23]}  {e['type']:<24} {obj.get('id', '')}  {obj.get('status', '')}")

    step("Ledger invariant check")
    _, report, _ = await c.call("GET", "/v1/operator/ledger/invariants", ops, expect=200)
    print("   OK: every entry balances, balances equal their postings, no wallet negative,"
          " holds match authorisations, captured payments have exactly their postings"
          if report["ok"] else f"   BROKEN: {json.dumps(report['violations'])}")
    if not report["ok"]:
        raise RuntimeError("ledger invariants broken")


async def counter_sale(base: str, secret: str, terminal: str, phone: str, password: str, amount_minor: int) -> None:
    """``python -m pos_agent.counter_demo`` as a child process (the gateway never imports the POS
    agent); the merchant key and wallet password go on its stdin, its output is shown indented.
    Bounded by ``COUNTER_TIMEOUT_S``; a failure (or a timeout) fails the demo."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pos_agent.counter_demo", "--gateway", base, "--terminal", terminal, "--phone", phone,
        "--amount-minor", str(amount_minor), "--currency", "CNY",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert process.stdin is not None and process.stdout is not None
    try:
        async with asyncio.timeout(COUNTER_TIMEOUT_S):
            process.stdin.write(f"{secret}\n{password}\n".encode())
            await process.stdin.drain()
            process.stdin.close()
            while line := await process.stdout.readline():
                print(f"   {line.decode(errors='replace').rstrip()}", flush=True)
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), COUNTER_STOP_S)
            except TimeoutError:
                process.kill()
                await process.wait()
    if code != 0:
        raise RuntimeError(f"the counter sale failed (exit code {code})")


async def main(settings: Settings, *, wait: bool) -> int:
    logs.configure("WARNING")
    url = _demo_url(settings.database.url)
    _, name = db._admin_url(url)
    await db.drop_database(url)
    await db.migrate(url)
    # The demo serves where its links (checkout pages) point, whatever port it was given.
    public_url = f"http://{settings.server.host}:{settings.server.port}"
    # Sign-in codes go to a simulated SMS gateway on loopback (a real HTTP server), signed with a fresh secret.
    sms = SmsGatewaySim("whsec_" + base64.b64encode(os.urandom(32)).decode())
    await sms.start()
    demo_settings = msgspec.structs.replace(
        settings, database=msgspec.structs.replace(settings.database, url=url),
        server=msgspec.structs.replace(settings.server, public_url=public_url),
        sign_in=msgspec.structs.replace(settings.sign_in, sms_hook_url=sms.url, sms_hook_secret=sms.secret))
    print(f"Fresh database {name} created and migrated.")
    # The first operator comes from the command line, as on a real installation.
    created = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "create-operator", "--email", OPERATOR[0], "--role", "admin",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "GATEWAY_DATABASE_URL": url},
    )
    out, _ = await asyncio.wait_for(created.communicate(f"{OPERATOR[1]}\n".encode()), timeout=60)
    if created.returncode != 0:
        raise RuntimeError(f"gateway create-operator failed: {out.decode()}")
    print(f"$ gateway create-operator --email {OPERATOR[0]} --role admin   -> {out.decode().strip()}")
    runner = web.AppRunner(create_app(demo_settings), access_log=None)
    await runner.setup()
    host, port = demo_settings.server.host, demo_settings.server.port
    await web.TCPSite(runner, host, port).start()
    base = f"http://{host}:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await play(Client(session, base, sms), Path("var/demo"))
        if not wait:
            print(f"\nThe demo is done and its gateway has stopped; without --no-wait it keeps serving at {base}"
                  f" (operator console: {base}/console/).")
            return 0
        print(f"\nThe gateway is running at {base}")
        print(f"   operator console: {base}/console/ (log in as {OPERATOR[0]})")
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            print(f"   {base}{path}")
        print(f"   operator login: POST {base}/v1/operator/sessions {{\"email\": \"{OPERATOR[0]}\", \"password\": \"{OPERATOR[1]}\"}}")
        print("Press Ctrl-C to stop.")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await sms.stop()
    return 0

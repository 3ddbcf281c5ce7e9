"""Builds real objects through the public API: an operator, merchants with keys, wallet holders."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY

from gateway.services import tenants
from gateway.services.context import Services
from tests.conftest import make_settings, sms_gateway

OPERATOR_EMAIL = "ops@example.com"
OPERATOR_PASSWORD = "correct horse battery"
_phones = itertools.count(13800000000)


def batched() -> tuple[float, float]:
    """Payments this process's batch statements were given, and those they refused (its metrics): a
    test proves with them which path paid."""
    return (REGISTRY.get_sample_value("gateway_group_commit_payments_per_batch_sum") or 0.0,
            REGISTRY.get_sample_value("gateway_group_commit_fallbacks_total") or 0.0)


def campaign_window() -> dict[str, str]:
    """A campaign's window open now (from an hour ago to two hours on), in UTC: the body fields of
    ``POST /v1/operator/campaigns`` that say when it runs."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return {"time_zone": "UTC", "starts_at": (now - timedelta(hours=1)).isoformat(timespec="seconds"),
            "ends_at": (now + timedelta(hours=2)).isoformat(timespec="seconds")}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Merchant:
    id: str
    secret: str
    publishable: str
    store: str

    @property
    def headers(self) -> dict[str, str]:
        return auth(self.secret)


@dataclass
class Holder:
    id: str
    phone: str
    token: str
    bank_account: str

    @property
    def headers(self) -> dict[str, str]:
        return auth(self.token)


class World:
    def __init__(self, client: TestClient, operator_token: str) -> None:
        self.client = client
        self.operator_token = operator_token

    @classmethod
    async def create(cls, client: TestClient) -> World:
        svc = await Services.start(make_settings())
        try:
            await tenants.create_operator(svc, OPERATOR_EMAIL, OPERATOR_PASSWORD, "admin")
        finally:
            await svc.stop()
        token = await cls.json(client, "POST", "/v1/operator/sessions",
                               json={"email": OPERATOR_EMAIL, "password": OPERATOR_PASSWORD}, expect=201)
        return cls(client, token["token"])

    @staticmethod
    async def json(client: TestClient, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        resp = await client.request(method, path, **kwargs)
        body = await resp.json()
        assert resp.status == expect, (resp.status, body)
        return body

    async def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        return await self.json(self.client, method, path, expect, **kwargs)

    @property
    def ops(self) -> dict[str, str]:
        return auth(self.operator_token)

    async def campaign(self, **terms: Any) -> Any:
        """A live campaign through the operator API: 1.00 CNY off every payment (bank-funded), a budget of
        10,000.00 (16 counter rows), from an hour ago to two hours ahead; ``terms`` override any of it."""
        now = datetime.now(UTC).replace(tzinfo=None)
        body = {"name": "Campaign", "currency": "CNY", "rule": "fixed", "fixed_amount": 100, "funded_by": "bank",
                "budget": 1_000_000, "time_zone": "UTC",
                "starts_at": (now - timedelta(hours=1)).isoformat(timespec="seconds"),
                "ends_at": (now + timedelta(hours=2)).isoformat(timespec="seconds"), **terms}
        return await self.call("POST", "/v1/operator/campaigns", 201, headers=self.ops, json=body)

    async def merchant(self, name: str = "Best Noodles", fee_bps: int = 100, mcc: str = "5812") -> Merchant:
        m = await self.call("POST", "/v1/merchants", 201, headers=self.ops,
                            json={"name": name, "mcc": mcc, "country": "CN", "city": "Beijing", "fee_bps": fee_bps})
        store = await self.call("POST", f"/v1/merchants/{m['id']}/stores", 201, headers=self.ops,
                                json={"name": "Main street", "city": "Beijing"})
        sk = await self.call("POST", f"/v1/merchants/{m['id']}/api_keys", 201, headers=self.ops, json={"kind": "secret"})
        pk = await self.call("POST", f"/v1/merchants/{m['id']}/api_keys", 201, headers=self.ops,
                             json={"kind": "publishable"})
        return Merchant(m["id"], sk["secret"], pk["secret"], store["id"])

    async def answer(self, phone: str, challenge: dict[str, Any]) -> str:
        """Read the code the challenge sent to ``phone`` from the SMS gateway (a real HTTP receiver) and
        verify it: the wallet token."""
        code = await sms_gateway().code(phone, challenge["id"])
        verified = await self.call("POST", f"/v1/wallet/challenges/{challenge['id']}/verify", 201,
                                   json={"code": code})
        return str(verified["token"])

    async def sign_in(self, phone: str, password: str = "s3cret-pass", device_id: str | None = None) -> str:
        """Log in as a wallet app does: a token at once from a trusted device, else through the code."""
        body: dict[str, Any] = {"phone": phone, "password": password}
        if device_id is not None:
            body["device_id"] = device_id
        resp = await self.client.post("/v1/wallet/sessions", json=body)
        answer = await resp.json()
        assert resp.status in (201, 202), (resp.status, answer)
        return str(answer["token"]) if resp.status == 201 else await self.answer(phone, answer)

    async def holder(self, top_up: int = 0, currency: str = "CNY", device_id: str | None = None) -> Holder:
        phone = f"+86{next(_phones)}{uuid.uuid4().int % 10}"
        body: dict[str, Any] = {"phone": phone, "password": "s3cret-pass"}
        if device_id is not None:
            body["device_id"] = device_id
        holder = await self.call("POST", "/v1/wallet/holders", 201, json=body)
        token = await self.answer(phone, holder["challenge"])
        bank = await self.call("POST", "/v1/wallet/bank_accounts", 201, headers=auth(token),
                               json={"bank_name": "ICBC", "account_number": "6222020200112233445"})
        h = Holder(holder["id"], phone, token, bank["id"])
        if top_up:
            await self.top_up(h, top_up, currency)
        return h

    async def top_up(self, h: Holder, amount: int, currency: str = "CNY") -> Any:
        return await self.call("POST", "/v1/wallet/top_ups", 201, headers=h.headers,
                               json={"bank_account": h.bank_account, "amount": amount, "currency": currency})

    async def payment(self, m: Merchant, amount: int, currency: str = "CNY", **extra: Any) -> Any:
        return await self.call("POST", "/v1/payments", 201, headers=m.headers,
                               json={"amount": amount, "currency": currency, **extra})

    async def pay(self, h: Holder, payment_id: str, expect: int = 200, key: str | None = None) -> Any:
        headers = dict(h.headers)
        if key:
            headers["Idempotency-Key"] = key
        return await self.call("POST", f"/v1/wallet/payments/{payment_id}/pay", expect, headers=headers, json={})

    async def available(self, h: Holder, currency: str = "CNY") -> int:
        wallet = await self.call("GET", "/v1/wallet", headers=h.headers)
        return next((b["available"] for b in wallet["balances"] if b["currency"] == currency), 0)

    async def merchant_total(self, m: Merchant, currency: str = "CNY") -> int:
        bal = await self.call("GET", "/v1/balance", headers=m.headers)
        return next((b["total"] for b in bal["balances"] if b["currency"] == currency), 0)



"""The agent's gateway client against the real gateway: the parts of docs/device-api.md the
counter tests do not reach (replays, status by reference, reversal, refusals, revocation)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from pos_agent.credentials import load_credentials
from pos_agent.errors import Declined, DeviceAuthError, GatewayRejected
from pos_agent.gateway_client import GatewayClient
from pos_agent.settings import GatewaySettings
from tests.e2e.conftest import Counter


async def test_client_contract(counter: Counter) -> None:
    credentials = load_credentials(counter.tmp / "credentials.json")
    settings = GatewaySettings(url=counter.gateway.url, backoff_base_s=0.05, backoff_max_s=0.1)
    async with GatewayClient(settings, credentials=credentials) as client:
        key = str(uuid.uuid4())
        first = await client.create_payment(amount_minor=700, currency="CNY", reference="C-1", description=None,
                                            idempotency_key=key)
        replay = await client.create_payment(amount_minor=700, currency="CNY", reference="C-1", description=None,
                                             idempotency_key=key)
        assert replay.id == first.id and first.status == "requires_payment_method"
        with pytest.raises(GatewayRejected) as caught:  # same key, other parameters
            await client.create_payment(amount_minor=701, currency="CNY", reference="C-1", description=None,
                                        idempotency_key=key)
        assert caught.value.status in (400, 409, 422)

        found = await client.find_payments("C-1")
        assert [p.id for p in found] == [first.id]
        assert await client.find_payments("C-nothing") == []

        reversed_ = await client.reverse(first.id, idempotency_key=f"reverse-{first.id}")
        assert reversed_.status == "canceled" and reversed_.reversed
        again = await client.reverse(first.id, idempotency_key=f"reverse-{first.id}")
        assert again.status == "canceled"

        with pytest.raises(Declined) as declined:
            await client.charge_pay_code(pay_code="19" + "0" * 16, amount_minor=100, currency="CNY",
                                         reference="C-2", idempotency_key=str(uuid.uuid4()))
        assert declined.value.error_code == "pay_code_unknown"

        ttid = uuid.uuid4().hex
        bad_tap: dict[str, Any] = {"terminal_transaction_id": ttid, "amount": 100, "currency": "CNY",
                   "merchant_reference": "C-3", "offline_approved_at": None,
                   "tap": {"token_pan": counter.provisioning["token_pan"], "psn": counter.provisioning["psn"],
                           "atc": 1, "arqc": "00" * 8, "aip": "0080", "iad": "06011203A00000", "cid": "80",
                           "terminal": {"9F02": "000000000100", "9F03": "000000000000", "9F1A": "0156",
                                        "95": "8000000000", "5F2A": "0156", "9A": "261123", "9C": "00",
                                        "9F37": "01020304"}}}
        with pytest.raises(Declined) as refused:
            await client.tap_payment(bad_tap, idempotency_key=ttid)
        assert refused.value.error_code in ("cryptogram_invalid", "amount_mismatch")

        await counter.api.call("POST", f"/v1/terminals/{counter.shop.terminal}/revoke", counter.shop.secret,
                               json={})
        with pytest.raises(DeviceAuthError):
            await client.renew_token()
        assert client.device_refused  # from now on this agent approves nothing offline

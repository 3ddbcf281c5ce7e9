"""Audit events of admin actions: written in the action's transaction (a failed action leaves none),
with actor and request id, listed by the events API (a merchant its own, operators every one), not
sent to webhooks unless they are webhook event types; business logs and the request line's error code."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import date, timedelta
from typing import Any

import asyncpg
import pytest

from gateway.domain.ids import Kind, decode
from gateway.errors import Conflict
from gateway.logs import SERVICE, JsonFormatter
from gateway.services import audit
from gateway.services.context import Services
from gateway.store.db import Connection
from tests.conftest import make_settings
from tests.integration.test_devices_taps import _device, _pay_tap, _phone, _tap
from tests.integration.world import OPERATOR_EMAIL, Merchant, World, auth

HOOK_URL = "http://127.0.0.1:9/hook"  # never called: this suite runs without the delivery worker


async def _events(world: World, headers: dict[str, str], path: str = "/v1/events", **query: str) -> list[Any]:
    """Every page of an events listing, newest first."""
    found: list[Any] = []
    params = {"limit": "100", **query}
    while True:
        page = await world.call("GET", path, headers=headers, params=params)
        found += page["data"]
        if not page["has_more"]:
            return found
        params["starting_after"] = page["data"][-1]["id"]


def _of(events: list[Any], event_type: str) -> list[Any]:
    return [e for e in events if e["type"] == event_type]


async def _key_id(world: World, m: Merchant) -> str:
    keys = await world.call("GET", f"/v1/merchants/{m.id}/api_keys", headers=world.ops)
    return str(next(k["id"] for k in keys["data"] if k["kind"] == "secret" and k["revoked_at"] is None))


async def test_each_admin_action_writes_its_audit_event_listed_with_tenancy(world: World) -> None:
    a, b = await world.merchant("A"), await world.merchant("B")
    ops_id = (await _events(world, world.ops, "/v1/operator/events", type="merchant.created"))[0]["actor"]["id"]
    assert ops_id.startswith("op_")
    a_key = await _key_id(world, a)

    terminal = await world.call("POST", f"/v1/merchants/{a.id}/terminals", 201, headers=world.ops,
                                json={"store": a.store, "label": "Counter 1"})
    code = await world.call("POST", f"/v1/terminals/{terminal['id']}/enrolment_codes", 201, headers=a.headers, json={})
    enrolled = await world.call("POST", "/v1/devices/enrolments", 201, json={"code": code["code"], "name": "agent"})
    await world.call("POST", f"/v1/terminals/{terminal['id']}/revoke", headers=a.headers, json={})
    spare = await world.call("POST", f"/v1/merchants/{a.id}/api_keys", 201, headers=world.ops, json={"kind": "secret"})
    await world.call("POST", f"/v1/api_keys/{spare['id']}/revoke",
                     headers={**world.ops, "X-Request-Id": "req-revoke-1"}, json={})
    endpoint = await world.call("POST", "/v1/webhook_endpoints", 201, headers=a.headers,
                                json={"url": HOOK_URL, "enabled_events": ["*"]})
    await world.call("DELETE", f"/v1/webhook_endpoints/{endpoint['id']}", headers=a.headers)
    await world.call("POST", f"/v1/merchants/{b.id}/suspend", headers=world.ops, json={})
    await world.call("POST", f"/v1/merchants/{b.id}/reactivate", headers=world.ops, json={})
    await world.call("POST", f"/v1/operator/merchants/{b.id}/settlement", headers=world.ops,
                     json={"timezone": "Asia/Shanghai"})
    await world.call("POST", f"/v1/operator/merchants/{b.id}/payout_account", 201, headers=world.ops,
                     json={"holder_name": "B Ltd", "bank_name": "Barclays", "account_number": "GB33BUKB20201555555555",
                           "bic": "BUKBGB22"})
    h = await world.holder()
    await world.call("POST", f"/v1/operator/wallet_holders/{h.id}/unlock", headers=world.ops, json={})
    await world.call("POST", f"/v1/operator/wallet_holders/{h.id}/tier", headers=world.ops, json={"tier": 2})
    await world.call("POST", "/v1/operator/lockouts/clear", headers=world.ops,
                     json={"kind": "wallet", "subject": h.phone})
    run = await world.call("POST", "/v1/operator/settlement_runs", headers=world.ops,
                           json={"date": (date.today() - timedelta(days=3)).isoformat(), "merchant": b.id})

    mine = await _events(world, a.headers)
    assert {e["merchant"] for e in mine} == {a.id}  # tenancy: nothing of B, nothing of no merchant
    assert {"merchant.created", "store.created", "api_key.created", "terminal.created",
            "terminal.enrolment_code_created", "terminal.enrolled", "terminal.revoked", "api_key.revoked",
            "webhook_endpoint.created", "webhook_endpoint.deleted"} <= {e["type"] for e in mine}
    assert len(_of(mine, "api_key.created")) == 3  # secret, publishable, spare
    [revoked] = _of(mine, "api_key.revoked")
    assert revoked["data"]["object"]["id"] == spare["id"] and revoked["data"]["object"]["revoked_at"]
    assert revoked["actor"] == {"type": "operator", "id": ops_id} and revoked["request_id"] == "req-revoke-1"
    assert _of(mine, "webhook_endpoint.created")[0]["actor"] == {"type": "api_key", "id": a_key}
    assert _of(mine, "terminal.revoked")[0]["actor"] == {"type": "api_key", "id": a_key}
    [enrolment] = _of(mine, "terminal.enrolled")
    assert enrolment["actor"] == {"type": "device", "id": enrolled["device"]}
    assert enrolment["data"]["object"]["terminal"] == terminal["id"]
    assert all(e["request_id"] and e["request_id"].startswith("req") for e in mine)
    # No secret in any event: key secrets, the enrolment code, the endpoint's signing secret.
    text = json.dumps(mine)
    assert spare["secret"] not in text and a.secret not in text and code["code"] not in text
    assert endpoint["secret"] not in text and all(e["data"]["object"].get("secret") is None for e in mine)

    theirs = await _events(world, b.headers)
    assert {e["merchant"] for e in theirs} == {b.id}
    assert {"merchant.suspended", "merchant.reactivated", "merchant.settlement_updated",
            "merchant.payout_account_set", "settlement_run.completed"} <= {e["type"] for e in theirs}
    assert "GB33BUKB20201555555555" not in json.dumps(theirs)
    assert _of(theirs, "settlement_run.completed")[0]["data"]["object"]["id"] == run["id"]

    # Operators see every merchant's and the gateway's own; a merchant filter narrows it.
    every = await _events(world, world.ops, "/v1/operator/events")
    assert {e["id"] for e in mine + theirs} <= {e["id"] for e in every}
    [unlocked] = _of(every, "wallet.unlocked")
    assert unlocked["merchant"] is None and unlocked["data"]["object"]["id"] == h.id
    assert unlocked["actor"] == {"type": "operator", "id": ops_id}
    assert _of(every, "wallet.tier_set")[0]["data"]["object"]["tier"] == 2
    [cleared] = _of(every, "lockout.cleared")
    assert cleared["data"]["object"]["kind"] == "wallet" and h.phone not in json.dumps(every)
    [created] = _of(every, "operator.created")
    assert created["actor"] == {"type": "cli", "id": None} and OPERATOR_EMAIL not in json.dumps(created)
    only_b = await _events(world, world.ops, "/v1/operator/events", merchant=b.id, type="merchant.*")
    # created, suspended, reactivated, settlement_updated, payout_account_set
    assert {e["merchant"] for e in only_b} == {b.id} and len(only_b) == 5
    keys = await _events(world, world.ops, "/v1/operator/events", type="api_key.*")
    assert {e["merchant"] for e in keys} == {a.id, b.id}

    # A merchant key cannot use the operator listing, nor reach another merchant's event.
    await world.call("GET", "/v1/operator/events", 401, headers=a.headers)
    await world.call("GET", f"/v1/events/{theirs[0]['id']}", 404, headers=a.headers)
    cursor = await world.call("GET", "/v1/events", 400, headers=a.headers, params={"starting_after": theirs[0]["id"]})
    assert cursor["error"]["code"] == "invalid_cursor"


async def test_a_failed_action_writes_no_audit_event(world: World, clean_db: str) -> None:
    m = await world.merchant()
    before = await _events(world, world.ops, "/v1/operator/events")
    missing_key = f"key_{uuid.uuid4().hex}"
    await world.call("POST", f"/v1/api_keys/{missing_key}/revoke", 404, headers=world.ops, json={})
    await world.call("POST", f"/v1/merchants/{m.id}/terminals", 404, headers=world.ops,
                     json={"store": f"sto_{uuid.uuid4().hex}", "label": "nowhere"})
    await world.call("POST", f"/v1/operator/wallet_holders/wh_{uuid.uuid4().hex}/unlock", 404, headers=world.ops,
                     json={})
    await world.call("POST", f"/v1/merchants/mer_{uuid.uuid4().hex}/suspend", 404, headers=world.ops, json={})
    await world.call("POST", "/v1/devices/enrolments", 401, json={"code": "ENR-AAAA-BBBB-CCCC", "name": "agent"})
    assert await _events(world, world.ops, "/v1/operator/events") == before

    # The event is the action's: written on its connection, it rolls back with it.
    svc = await Services.start(make_settings())
    try:
        async def work(conn: Connection) -> None:
            await audit.record(conn, None, "wallet.unlocked", uuid.uuid4(), {"object": "wallet_holder"},
                               merchant_id=None)
            raise Conflict("the action failed after its audit event", code="test_rollback")

        with pytest.raises(Conflict):
            await svc.db.run(work)
    finally:
        await svc.stop()
    conn = await asyncpg.connect(clean_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM events WHERE type = 'wallet.unlocked'") == 0
    finally:
        await conn.close()


async def test_audit_only_events_are_not_sent_to_webhooks(world: World, clean_db: str) -> None:
    m = await world.merchant()
    await world.call("POST", "/v1/webhook_endpoints", 201, headers=m.headers,
                     json={"url": HOOK_URL, "enabled_events": ["*"]})
    await world.call("POST", f"/v1/merchants/{m.id}/api_keys", 201, headers=world.ops, json={"kind": "secret"})
    await world.call("POST", f"/v1/merchants/{m.id}/suspend", headers=world.ops, json={})
    conn = await asyncpg.connect(clean_db)
    try:
        delivered = await conn.fetch("SELECT e.type FROM webhook_deliveries d JOIN events e ON e.id = d.event_id")
    finally:
        await conn.close()
    assert [r["type"] for r in delivered] == ["merchant.suspended"]  # a webhook type; api_key.created is audit-only
    await world.call("POST", f"/v1/merchants/{m.id}/reactivate", headers=world.ops, json={})
    [created] = _of(await _events(world, m.headers), "api_key.created")[:1]
    refused = await world.call("POST", f"/v1/events/{created['id']}/redeliver", 400, headers=m.headers, json={})
    assert refused["error"]["code"] == "event_not_deliverable"


async def test_request_line_carries_the_error_code_and_failed_logins_name_no_secret(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    formatter = JsonFormatter(SERVICE)
    with caplog.at_level(logging.INFO, logger="gateway"):
        await world.call("POST", f"/v1/api_keys/key_{uuid.uuid4().hex}/revoke", 404, headers=world.ops, json={})
        await world.call("GET", "/v1/merchants", headers=world.ops)
        await world.call("POST", "/v1/operator/sessions", 401,
                         json={"email": OPERATOR_EMAIL, "password": "not the password at all"})
        await world.call("POST", "/v1/operator/sessions", 401,
                         json={"email": "nobody@elsewhere.example", "password": "not the password at all"})
        # A stored refusal replayed: its answer is a body, not a raised error; the line has its code too.
        m = await world.merchant()
        h = await world.holder()
        payment = await world.payment(m, 5_000)
        for _ in range(2):
            await world.pay(h, payment["id"], expect=402, key="pay-once")
    lines = [json.loads(formatter.format(r)) for r in caplog.records]
    requests = [line for line in lines if line["msg"] == "request"]
    pays = [line for line in requests if line["route"] == "/v1/wallet/payments/{id}/pay"]
    assert [(p["status"], p["code"], p["param"]) for p in pays] == [(402, "insufficient_funds", "amount")] * 2
    refused = next(line for line in requests if line["route"] == "/v1/api_keys/{id}/revoke")
    assert (refused["status"], refused["code"], refused["param"]) == (404, "resource_missing", "id")
    assert refused["request_id"].startswith("req_") and refused["service"] == "gateway"
    listed = next(line for line in requests if line["route"] == "/v1/merchants")
    assert listed["status"] == 200 and "code" not in listed and "param" not in listed
    failed = [line for line in lines if line["msg"] == "operator login failed"]
    assert [f["level"] for f in failed] == ["warning", "warning"]
    assert failed[0]["operator_id"] and failed[0]["email_domain"] == "example.com"
    assert failed[1]["operator_id"] is None and failed[1]["email_domain"] == "elsewhere.example"
    text = json.dumps(lines)
    assert "not the password at all" not in text and OPERATOR_EMAIL not in text and "nobody@" not in text


async def test_business_logs_of_key_creation_and_enrolment_name_ids_and_prefixes_only(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gateway"):
        m = await world.merchant()
        terminal = await world.call("POST", f"/v1/merchants/{m.id}/terminals", 201, headers=world.ops,
                                    json={"store": m.store, "label": "Counter 1"})
        code = await world.call("POST", f"/v1/terminals/{terminal['id']}/enrolment_codes", 201, headers=m.headers,
                                json={})
        enrolled = await world.call("POST", "/v1/devices/enrolments", 201, json={"code": code["code"], "name": "a"})
        await world.call("POST", "/v1/devices/sessions", 401,
                         json={"device": enrolled["device"], "device_secret": "ds_wrong"})
    text = "\n".join(JsonFormatter(SERVICE).format(r) for r in caplog.records)
    created = [r for r in caplog.records if r.getMessage() == "api key created"]
    assert len(created) == 2 and m.secret.startswith(vars(created[0])["key_prefix"])
    assert any(r.getMessage() == "device enrolled" for r in caplog.records)
    [refused] = [r for r in caplog.records if r.getMessage() == "device session refused"]
    assert vars(refused)["device_id"] and "ds_wrong" not in text
    for secret in (m.secret, m.publishable, code["code"], enrolled["device_secret"], enrolled["access_token"]):
        assert secret not in text
    assert auth(m.secret)["Authorization"] not in text


async def test_declines_and_cryptogram_failures_are_business_logs(world: World,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=100)
    device, _ = await _device(world, m)
    card = await _phone(world, h)
    payment = await world.payment(m, 5_000)
    tap = _tap(card, 1_000)
    forged = {**tap, "terminal": {**tap["terminal"], "9F02": "000000000010"}}
    with caplog.at_level(logging.INFO, logger="gateway"):
        await world.pay(h, payment["id"], expect=402)
        await _pay_tap(world, device["access_token"], forged, 10, expect=402)
    [declined] = [r for r in caplog.records if r.getMessage() == "payment declined"]
    assert vars(declined)["code"] == "insufficient_funds" and vars(declined)["channel"] == "wallet"
    assert vars(declined)["payment_id"] == str(decode(Kind.PAYMENT, payment["id"]))
    assert vars(declined)["merchant_id"] == str(decode(Kind.MERCHANT, m.id))
    [refused] = [r for r in caplog.records if r.getMessage() == "tap cryptogram refused"]
    assert refused.levelno == logging.WARNING and vars(refused)["code"] == "cryptogram_invalid"
    text = "\n".join(JsonFormatter(SERVICE).format(r) for r in caplog.records)
    assert tap["arqc"] not in text and tap["token_pan"] not in text

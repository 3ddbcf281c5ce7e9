"""The POS agent against the real gateway (real HTTP on loopback): the gateway's own refusal reaches
the cashier and a 401 on a call made without a token is final; the heartbeat shows on the
terminal (to its merchant and operators only) and survives a gateway that is down; ``pos-agent
doctor`` and ``status`` with simulated devices."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from pos_agent.agent import enrol, enrolment_key
from pos_agent.credentials import Credentials
from pos_agent.errors import DeviceAuthError, GatewayRejected
from pos_agent.gateway_client import GatewayClient
from pos_agent.health import agent_version, heartbeat_forever
from pos_agent.journal import AsyncJournal, Journal
from pos_agent.settings import GatewaySettings, OfflineLimits, Settings, parse
from tests.agent.test_health import simulated_devices
from tests.integration.world import World, auth

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 10.0


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def gateway_url(client: TestClient) -> str:
    return str(client.make_url("")).rstrip("/")


def agent_settings(tmp_path: Path, url: str) -> Settings:
    return parse({"gateway": {"url": url, "backoff_base_s": 0.01, "backoff_max_s": 0.02}}, base_dir=tmp_path)


async def terminal_code(world: World) -> tuple[str, str]:
    m = await world.merchant()
    terminal = await world.call("POST", f"/v1/merchants/{m.id}/terminals", 201, headers=world.ops,
                                json={"store": m.store, "label": "Counter 1"})
    code = await world.call("POST", f"/v1/terminals/{terminal['id']}/enrolment_codes", 201, headers=m.headers,
                            json={})
    return terminal["id"], code["code"]


async def test_a_wrong_enrolment_code_is_the_gateways_refusal(world: World, tmp_path: Path) -> None:
    settings = agent_settings(tmp_path, gateway_url(world.client))
    async with asyncio.timeout(CALL_TIMEOUT_S):
        with pytest.raises(GatewayRejected) as refused:
            await enrol(settings, "ENR-WRNG-WRNG-WRNG")
    rejection = refused.value
    assert type(rejection) is GatewayRejected  # not a device credential problem: there is no device yet
    assert (rejection.status, rejection.error_code) == (401, "invalid_enrolment_code")
    assert "unknown, used or expired" in str(rejection)
    assert not settings.credentials_path.exists()


async def test_enrol_command_prints_the_gateways_reason(world: World, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'[gateway]\nurl = "{gateway_url(world.client)}"\n', encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pos_agent", "enrol", "--config", str(config), "--code", "ENR-WRNG-WRNG-WRNG",
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    assert process.returncode == 2, err
    assert out == b""
    lines = [json.loads(line) for line in err.decode().splitlines()]
    assert [e["level"] for e in lines] == ["error"]
    message = lines[0]["msg"]
    assert "invalid_enrolment_code" in message and "the enrolment code is unknown, used or expired" in message
    assert "not_enrolled" not in message and "no device credentials" not in message


async def test_a_wrong_device_secret_is_refused_at_once(world: World, tmp_path: Path) -> None:
    """A 401 on the session call (no token sent) is final; renewing a token there would wait on itself."""
    _, code = await terminal_code(world)
    settings = agent_settings(tmp_path, gateway_url(world.client))
    async with asyncio.timeout(CALL_TIMEOUT_S):
        enrolment = await enrol(settings, code)
        wrong = dataclasses.replace(enrolment.credentials, device_secret="ds_wrong")
        async with GatewayClient(settings.gateway, credentials=wrong) as client:
            with pytest.raises(DeviceAuthError) as refused:
                await client.renew_token()
    assert (refused.value.status, refused.value.error_code) == (401, "invalid_device_credentials")
    assert client.device_refused


async def test_enrolment_then_an_authenticated_call(world: World, tmp_path: Path) -> None:
    _, code = await terminal_code(world)
    settings = agent_settings(tmp_path, gateway_url(world.client))
    async with asyncio.timeout(CALL_TIMEOUT_S):
        enrolment = await enrol(settings, code)
        async with GatewayClient(GatewaySettings(url=settings.gateway.url),
                                 credentials=enrolment.credentials) as client:
            payment = await client.create_payment(amount_minor=100, currency="CNY", reference="T1-000001-Q1",
                                                  description=None, idempotency_key=enrolment_key(code) + "-p")
    assert payment.status == "requires_payment_method"


async def test_heartbeat_shows_on_the_terminal_to_its_merchant_and_operators(world: World, tmp_path: Path) -> None:
    m = await world.merchant()
    other = await world.merchant("Other shop")
    terminal = await world.call("POST", f"/v1/merchants/{m.id}/terminals", 201, headers=world.ops,
                                json={"store": m.store, "label": "Counter 1"})
    code = (await world.call("POST", f"/v1/terminals/{terminal['id']}/enrolment_codes", 201, headers=m.headers,
                             json={}))["code"]
    path = f"/v1/terminals/{terminal['id']}"
    unseen = await world.call("GET", path, headers=m.headers)
    assert (unseen["device"], unseen["agent_version"], unseen["last_seen_at"]) == (None, None, None)

    now_s = [1_000.0]
    journal = AsyncJournal(Journal(tmp_path / "journal.sqlite3", clock=lambda: now_s[0]))
    journal.sync.approve_offline_tap(
        OfflineLimits(), terminal_transaction_id="tt1", sale_reference="T1-000001", token_pan="9901", atc=3,
        amount_minor=500, currency="CNY", expected_currency="CNY", body={"terminal_transaction_id": "tt1"})
    now_s[0] = 1_090.0  # the oldest offline tap has waited 90 s by the agent's clock
    settings = agent_settings(tmp_path, gateway_url(world.client))
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            enrolment = await enrol(settings, code)
            async with GatewayClient(settings.gateway, credentials=enrolment.credentials) as client:
                beating = asyncio.create_task(heartbeat_forever(client, journal, interval_s=3600))
                while (seen := await world.call("GET", path, headers=m.headers))["last_seen_at"] is None:
                    assert not beating.done(), beating
                    await asyncio.sleep(0.05)
                beating.cancel()
    finally:
        await journal.close()
    assert seen["device"] == enrolment.credentials.device and seen["agent_version"] == agent_version()
    assert seen["offline_backlog_count"] == 1
    waited = datetime.fromisoformat(seen["last_seen_at"]) - datetime.fromisoformat(seen["offline_backlog_oldest_at"])
    assert waited == timedelta(seconds=90)

    listed = await world.call("GET", "/v1/terminals", headers=m.headers)
    assert listed["data"] == [seen] and listed["has_more"] is False
    assert await world.call("GET", path, headers=world.ops) == seen
    operators_list = await world.call("GET", "/v1/terminals", headers=world.ops, params={"limit": "100"})
    assert seen in operators_list["data"]
    # Tenancy: another merchant neither reads nor lists it; a publishable key is no credential for it.
    hidden = await world.call("GET", path, 404, headers=other.headers)
    assert hidden["error"]["code"] == "resource_missing" and hidden["error"]["param"] == "id"
    assert (await world.call("GET", "/v1/terminals", headers=other.headers))["data"] == []
    await world.call("GET", "/v1/terminals", 401, headers=auth(m.publishable))

    # Revoked: the device's heartbeats are refused, the terminal keeps what its agent last reported.
    revoked = await world.call("POST", f"{path}/revoke", headers=m.headers, json={})
    assert revoked["status"] == "revoked" and revoked["last_seen_at"] == seen["last_seen_at"]
    async with GatewayClient(settings.gateway, credentials=enrolment.credentials) as client:
        with pytest.raises(DeviceAuthError):
            await client.heartbeat(agent_version="9", backlog_count=0, backlog_oldest_age_s=None,
                                   idempotency_key="hb-after-revoke")


async def test_terminals_are_paginated_newest_first(world: World) -> None:
    m = await world.merchant()
    made = [(await world.call("POST", f"/v1/merchants/{m.id}/terminals", 201, headers=world.ops,
                              json={"store": m.store, "label": f"Counter {i}"}))["id"] for i in range(3)]
    first = await world.call("GET", "/v1/terminals", headers=m.headers, params={"limit": "2"})
    assert [t["id"] for t in first["data"]] == made[:0:-1] and first["has_more"] is True
    rest = await world.call("GET", "/v1/terminals", headers=m.headers,
                            params={"limit": "2", "starting_after": first["data"][-1]["id"]})
    assert [t["id"] for t in rest["data"]] == made[:1] and rest["has_more"] is False
    bad = await world.call("GET", "/v1/terminals", 400, headers=m.headers, params={"starting_after": "pay_x"})
    assert bad["error"]["param"] == "starting_after"


async def test_the_heartbeat_survives_a_gateway_that_is_down(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pos_agent")
    settings = agent_settings(tmp_path, f"http://127.0.0.1:{closed_port()}")
    journal = AsyncJournal.open(tmp_path / "journal.sqlite3")
    credentials = Credentials("x", "dev_1", "ds_x", "ter_1", "sto_1", "mer_1")

    def count(text: str) -> int:
        return sum(text in r.getMessage() for r in caplog.records)

    try:
        async with GatewayClient(settings.gateway, credentials=credentials) as client:
            beating = asyncio.create_task(heartbeat_forever(client, journal, interval_s=0.01))
            async with asyncio.timeout(CALL_TIMEOUT_S):
                # Three beats, each failing to get its token: the gateway is not there.
                while count("POST /v1/devices/sessions -> CONNECT_FAILED") < 3 * settings.gateway.retry_count_max:
                    assert not beating.done(), beating
                    await asyncio.sleep(0.01)
            beating.cancel()
    finally:
        await journal.close()
    assert count("heartbeat failed") == 1  # once per failing streak, not once per beat


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pos_agent", *args, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_doctor_and_status_commands_before_the_shop_opens(world: World, tmp_path: Path) -> None:
    _, code = await terminal_code(world)
    async with simulated_devices() as devices:
        config = tmp_path / "agent.toml"
        config.write_text(devices.toml(gateway_url(world.client)), encoding="utf-8")
        enrolled, _, err = await run_cli("enrol", "--config", str(config), "--code", code)
        assert enrolled == 0, err

        healthy, out, err = await run_cli("doctor", "--config", str(config))
        lines = out.splitlines()
        assert healthy == 0, out + err
        assert len(lines) == 7 and all(line.startswith("ok   ") for line in lines), lines
        assert any(line.startswith("ok   printer ") and line.endswith(": online, paper loaded") for line in lines)
        assert "accepts this device" in out

        gone = str(tmp_path / "ttyACM7")
        config.write_text(devices.toml(gateway_url(world.client), printer=gone), encoding="utf-8")
        failing, out, _ = await run_cli("doctor", "--config", str(config))
        assert failing == 1
        failed = [line for line in out.splitlines() if line.startswith("FAIL")]
        assert len(failed) == 1 and failed[0].startswith(f"FAIL printer {gone}: cannot open {gone}"), out

        status, out, _ = await run_cli("status", "--config", str(config))
        assert status == 1 and f"FAIL printer {gone}: no such device" in out.splitlines()
        assert "ok   offline backlog: no offline taps waiting" in out.splitlines()
        _, out, _ = await run_cli("status", "--json", "--config", str(config))
        report = json.loads(out)
        assert report["offline_backlog"] == {"count": 0, "oldest_age_s": None}
        assert {c["name"]: c["ok"] for c in report["checks"]}["gateway"] is True

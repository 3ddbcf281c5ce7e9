"""The POS agent's gateway client and command line against the real gateway (real HTTP on loopback):
the gateway's own refusal reaches the cashier, and a 401 on a call made without a token is final."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path

from aiohttp.test_utils import TestClient

from pos_agent.agent import enrol, enrolment_key
from pos_agent.errors import DeviceAuthError, GatewayRejected
from pos_agent.gateway_client import GatewayClient
from pos_agent.settings import GatewaySettings, Settings, parse
from tests.integration.world import World

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 10.0


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
        try:
            await enrol(settings, "ENR-WRNG-WRNG-WRNG")
        except GatewayRejected as refused:
            rejection = refused
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
    assert [e["level"] for e in lines] == ["ERROR"]
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
            try:
                await client.renew_token()
            except DeviceAuthError as refused:
                rejection = refused
    assert (rejection.status, rejection.error_code) == (401, "invalid_device_credentials")
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

"""Sign-ins that need no credential are throttled before any hash; the API limiter is a token bucket.

Real PostgreSQL, Redis and HTTP. Lockouts use delays of a few seconds here (the defaults are a
minute doubling to an hour). ``passwords.verifications_total`` proves that a refused attempt
computes no Argon2 hash.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from gateway.auth import passwords
from gateway.services import tenants
from gateway.services.context import Services
from gateway.settings import Settings
from tests.conftest import TEST_DB_URL, TEST_REDIS_URL, make_settings
from tests.integration.world import OPERATOR_EMAIL, OPERATOR_PASSWORD, World, auth

LOCKOUT_S = 2  # the first lockout; it doubles to LOCKOUT_MAX_S
LOCKOUT_MAX_S = 4
FAILURES_FREE = 5
# Generous buckets, so that only the per-account lockout is at work unless a test says otherwise.
LOCKOUT = {"failures_before_lockout": FAILURES_FREE, "lockout_base_s": LOCKOUT_S, "lockout_max_s": LOCKOUT_MAX_S,
           "address_exempt": "", "address_per_s": 1000.0, "address_burst": 1000,
           "overall_per_s": 1000.0, "overall_burst": 1000}
PASSWORD = "s3cret-pass"
WALLET_LOGIN = "/v1/wallet/sessions"
# The right password of a holder whose phone no code has proven yet: a sign-in challenge (a code sent).
SIGNED_IN = 202
OPERATOR_LOGIN = "/v1/operator/sessions"
CLEAR = "/v1/operator/lockouts/clear"


@pytest.fixture
def settings() -> Settings:
    return make_settings(throttle=LOCKOUT)


@pytest.fixture(autouse=True)
async def fresh_buckets() -> AsyncIterator[None]:
    """Sign-in buckets are named after the test database, so they outlive a test: start each one full."""
    redis = aioredis.Redis.from_url(TEST_REDIS_URL)
    pattern = f"tb:login:{urlsplit(TEST_DB_URL).path.lstrip('/')}:*"

    async def drop() -> None:
        keys = [key async for key in redis.scan_iter(match=pattern)]
        if keys:
            await redis.delete(*keys)

    await drop()
    yield
    await drop()
    await redis.aclose()


@asynccontextmanager
async def gateway(app_factory: Callable[..., Any], **overrides: dict[str, object]) -> AsyncIterator[TestClient]:
    """Another gateway process on the same database (and Redis, unless overridden)."""
    async with TestClient(TestServer(app_factory(make_settings(**overrides)), host="127.0.0.1")) as client:
        yield client


async def attempt(client: TestClient, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], str | None]:
    resp = await client.post(path, json=body)
    return resp.status, await resp.json(), resp.headers.get("Retry-After")


async def holder(world: World) -> str:
    phone = f"+8613{time.time_ns() % 10**9:09d}"
    await world.call("POST", "/v1/wallet/holders", 201, json={"phone": phone, "password": PASSWORD})
    return phone


async def world_holder_token(world: World) -> str:
    phone = await holder(world)
    return await world.sign_in(phone, PASSWORD)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_wrong_passwords_lock_the_account_and_the_right_one_waits_for_the_lockout(world: World) -> None:
    phone = await holder(world)
    hashes_before = passwords.verifications_total
    results = [await attempt(world.client, WALLET_LOGIN, {"phone": phone, "password": f"wrong-{i}"})
               for i in range(25)]
    assert [status for status, _, _ in results] == [401] * FAILURES_FREE + [429] * (25 - FAILURES_FREE)
    for _, body, retry_after in results[FAILURES_FREE:]:
        assert body["error"]["code"] == "sign_in_locked"
        assert retry_after is not None and 1 <= int(retry_after) <= LOCKOUT_S
    assert passwords.verifications_total - hashes_before == FAILURES_FREE  # a refused guess costs no hash

    status, body, retry_after = await attempt(world.client, WALLET_LOGIN, {"phone": phone, "password": PASSWORD})
    assert (status, body["error"]["code"]) == (429, "sign_in_locked") and retry_after is not None
    assert passwords.verifications_total - hashes_before == FAILURES_FREE
    await asyncio.sleep(int(retry_after) + 0.1)
    await world.call("POST", WALLET_LOGIN, SIGNED_IN, json={"phone": phone, "password": PASSWORD})
    # The success forgot the failures: four more wrong passwords are plain 401s again.
    for i in range(FAILURES_FREE - 1):
        await world.call("POST", WALLET_LOGIN, 401, json={"phone": phone, "password": f"again-{i}"})
    await world.call("POST", WALLET_LOGIN, SIGNED_IN, json={"phone": phone, "password": PASSWORD})


async def test_the_lockout_doubles_with_each_failure_after_it_up_to_the_cap(world: World) -> None:
    phone = await holder(world)
    for i in range(FAILURES_FREE):
        await world.call("POST", WALLET_LOGIN, 401, json={"phone": phone, "password": f"wrong-{i}"})
    await asyncio.sleep(LOCKOUT_S + 0.1)
    await world.call("POST", WALLET_LOGIN, 401, json={"phone": phone, "password": "wrong-again"})
    _, _, retry_after = await attempt(world.client, WALLET_LOGIN, {"phone": phone, "password": PASSWORD})
    assert retry_after is not None and LOCKOUT_S < int(retry_after) <= LOCKOUT_MAX_S


async def test_an_operator_clears_a_lockout_and_only_support_or_admin_may(world: World) -> None:
    phone = await holder(world)
    for i in range(FAILURES_FREE):
        await world.call("POST", WALLET_LOGIN, 401, json={"phone": phone, "password": f"wrong-{i}"})
    await world.call("POST", WALLET_LOGIN, 429, json={"phone": phone, "password": PASSWORD})

    svc = await Services.start(make_settings())
    try:
        for role in ("settlement", "support"):
            await tenants.create_operator(svc, f"{role}@example.com", OPERATOR_PASSWORD, role)
    finally:
        await svc.stop()
    tokens = {role: (await world.call("POST", OPERATOR_LOGIN, 201,
                                      json={"email": f"{role}@example.com", "password": OPERATOR_PASSWORD}))["token"]
              for role in ("settlement", "support")}
    refused = await world.call("POST", CLEAR, 403, headers=auth(tokens["settlement"]),
                               json={"kind": "wallet", "subject": phone})
    assert refused["error"]["code"] == "role_forbidden"
    not_operator = await world.call("POST", CLEAR, 401, headers=auth(await world_holder_token(world)),
                                    json={"kind": "wallet", "subject": phone})
    assert not_operator["error"]["code"] == "credential_not_accepted"
    bad = await world.call("POST", CLEAR, 400, headers=world.ops, json={"kind": "email", "subject": phone})
    assert bad["error"]["param"] == "kind"

    cleared = await world.call("POST", CLEAR, headers=auth(tokens["support"]), json={"kind": "wallet", "subject": phone})
    assert cleared == {"object": "lockout_clearance", "kind": "wallet", "cleared": True}
    await world.call("POST", WALLET_LOGIN, SIGNED_IN, json={"phone": phone, "password": PASSWORD})
    again = await world.call("POST", CLEAR, headers=world.ops, json={"kind": "wallet", "subject": phone})
    assert again["cleared"] is False

    spec = await world.call("GET", "/openapi.json")
    assert "post" in spec["paths"][CLEAR]


async def test_an_unknown_phone_is_locked_exactly_like_a_known_one(world: World) -> None:
    known, unknown = await holder(world), "+8613999999999"
    hashes_before = passwords.verifications_total
    for phone in (known, unknown):
        statuses = [(await attempt(world.client, WALLET_LOGIN, {"phone": phone, "password": "wrong-pass"}))[0]
                    for _ in range(FAILURES_FREE + 2)]
        assert statuses == [401] * FAILURES_FREE + [429, 429]
    assert passwords.verifications_total - hashes_before == 2 * FAILURES_FREE


async def test_operator_login_is_locked_for_every_spelling_of_the_email(world: World) -> None:
    for i in range(FAILURES_FREE):
        await world.call("POST", OPERATOR_LOGIN, 401, json={"email": OPERATOR_EMAIL, "password": f"wrong-{i}"})
    locked = await world.call("POST", OPERATOR_LOGIN, 429,
                              json={"email": OPERATOR_EMAIL.upper(), "password": OPERATOR_PASSWORD})
    assert locked["error"]["code"] == "sign_in_locked"
    # The existing operator token still works: the lockout is of signing in, not of the account.
    await world.call("POST", CLEAR, headers=world.ops, json={"kind": "operator", "subject": OPERATOR_EMAIL.upper()})
    await world.call("POST", OPERATOR_LOGIN, 201, json={"email": OPERATOR_EMAIL, "password": OPERATOR_PASSWORD})


async def test_device_sessions_and_enrolments_are_locked(world: World) -> None:
    m = await world.merchant()
    terminal = await world.call("POST", f"/v1/merchants/{m.id}/terminals", 201, headers=world.ops,
                                json={"store": m.store, "label": "Counter 1"})
    code = await world.call("POST", f"/v1/terminals/{terminal['id']}/enrolment_codes", 201, headers=m.headers,
                            json={})
    device = await world.call("POST", "/v1/devices/enrolments", 201, json={"code": code["code"], "name": "agent"})
    right = {"device": device["device"], "device_secret": device["device_secret"]}
    for i in range(FAILURES_FREE):
        await world.call("POST", "/v1/devices/sessions", 401, json={**right, "device_secret": f"ds_wrong{i}"})
    locked = await world.call("POST", "/v1/devices/sessions", 429, json=right)
    assert locked["error"]["code"] == "sign_in_locked"
    await world.call("POST", CLEAR, headers=world.ops, json={"kind": "device", "subject": device["device"]})
    await world.call("POST", "/v1/devices/sessions", 201, json=right)

    guessed = {"code": "ENR-AAAA-BBBB-CCCC", "name": "agent"}
    for _ in range(FAILURES_FREE):
        await world.call("POST", "/v1/devices/enrolments", 401, json=guessed)
    # The same code in another spelling is the same account.
    await world.call("POST", "/v1/devices/enrolments", 429, json={**guessed, "code": "enr-aaaa-bbbb-cccc "})


async def test_one_address_is_limited_across_accounts(world: World, app_factory: Callable[..., Any]) -> None:
    burst = 3
    phones = [await holder(world) for _ in range(burst + 1)]
    per_address = {**LOCKOUT, "address_per_s": 0.01, "address_burst": burst}
    async with gateway(app_factory, throttle=per_address) as client:
        hashes_before = passwords.verifications_total
        results = [await attempt(client, WALLET_LOGIN, {"phone": p, "password": "wrong-pass"}) for p in phones]
        assert [s for s, _, _ in results] == [401] * burst + [429]
        _, body, retry_after = results[-1]
        assert body["error"]["code"] == "sign_in_rate_limited"
        assert retry_after is not None and 90 <= int(retry_after) <= 100  # one token at 0.01 a second
        assert passwords.verifications_total - hashes_before == burst
        # Even the right password of a fresh account waits: the address, not the account, is out of tokens.
        await attempt(client, WALLET_LOGIN, {"phone": phones[-1], "password": PASSWORD})
        assert passwords.verifications_total - hashes_before == burst


async def test_the_overall_limit_holds_for_exempt_addresses_and_across_processes(
    world: World, app_factory: Callable[..., Any]
) -> None:
    overall = {**LOCKOUT, "address_exempt": "127.0.0.1", "overall_per_s": 0.01, "overall_burst": 4}
    phones = [await holder(world) for _ in range(5)]
    async with gateway(app_factory, throttle=overall) as one, gateway(app_factory, throttle=overall) as two:
        statuses = [(await attempt(client, WALLET_LOGIN, {"phone": p, "password": PASSWORD}))[0]
                    for client, p in zip([one, two, one, two, one], phones, strict=True)]
    assert statuses == [SIGNED_IN] * 4 + [429]


async def test_the_api_limiter_lets_no_more_than_the_bucket_through_at_a_window_edge(
    world: World, app_factory: Callable[..., Any]
) -> None:
    limit = 5
    m = await world.merchant()
    async with gateway(app_factory, auth={"rate_limit_per_s": limit}) as client:
        # Half the requests in the last 40 ms of a second, half just after it turns: a fixed
        # one-second window lets 2 * limit through.
        await asyncio.sleep((0.96 - time.time() % 1) % 1)
        started_s = time.monotonic()
        first = await asyncio.gather(*(client.get("/v1/balance", headers=m.headers) for _ in range(limit)))
        if time.time() % 1 > 0.5:  # still before the edge
            await asyncio.sleep(1 - time.time() % 1 + 0.005)
        second = await asyncio.gather(*(client.get("/v1/balance", headers=m.headers) for _ in range(limit)))
        elapsed_s = time.monotonic() - started_s
        statuses = [r.status for r in first + second]
        refill = int(limit * elapsed_s)
        assert statuses.count(200) <= limit + refill, (statuses, elapsed_s)
        assert refill < limit  # the test did straddle the edge quickly enough to tell the two limiters apart
        for r in first + second:
            if r.status == 429:
                assert int(r.headers["Retry-After"]) >= 1
        await asyncio.sleep(1.1)
        await world.json(client, "GET", "/v1/balance", headers=m.headers)


async def test_without_redis_logins_are_still_locked_per_account_and_the_api_works(
    world: World, app_factory: Callable[..., Any]
) -> None:
    phone = await holder(world)
    m = await world.merchant()
    no_redis = {"url": f"redis://127.0.0.1:{closed_port()}/0", "timeout_s": 0.2}
    async with gateway(app_factory, redis=no_redis, throttle=LOCKOUT) as client:
        statuses = [(await attempt(client, WALLET_LOGIN, {"phone": phone, "password": "wrong-pass"}))[0]
                    for _ in range(FAILURES_FREE + 1)]
        assert statuses == [401] * FAILURES_FREE + [429]
        assert (await client.get("/v1/balance", headers=m.headers)).status == 200
    # The lockout lives in PostgreSQL: a gateway with Redis sees it too.
    await world.call("POST", WALLET_LOGIN, 429, json={"phone": phone, "password": PASSWORD})


async def test_without_redis_each_process_still_limits_addresses(world: World, app_factory: Callable[..., Any]) -> None:
    phones = [await holder(world) for _ in range(3)]
    no_redis = {"url": f"redis://127.0.0.1:{closed_port()}/0", "timeout_s": 0.2}
    async with gateway(app_factory, redis=no_redis, throttle={**LOCKOUT, "address_per_s": 0.01,
                                                               "address_burst": 2}) as client:
        statuses = [(await attempt(client, WALLET_LOGIN, {"phone": p, "password": PASSWORD}))[0] for p in phones]
    assert statuses == [SIGNED_IN, SIGNED_IN, 429]


async def test_the_reaper_forgets_quiet_unlocked_accounts_only(world: World, clean_db: str) -> None:
    """``login_failures`` does not grow for ever: rows quiet for the forget window go, unless locked."""
    import asyncpg

    from gateway.api.routing import SERVICES
    from gateway.workers.expiry import tick

    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute(
            "INSERT INTO login_failures (kind, subject_hash, failures, locked_until, updated_at) VALUES"
            " ('wallet', $1, 3, NULL, now() - interval '2 days'),"
            " ('wallet', $2, 3, NULL, now() - interval '1 hour'),"
            " ('operator', $3, 9, now() + interval '1 hour', now() - interval '2 days')",
            b"a" * 32, b"b" * 32, b"c" * 32)
        await tick(world.client.server.app[SERVICES])
        left = {bytes(r["subject_hash"])[:1] for r in await conn.fetch("SELECT subject_hash FROM login_failures")}
    finally:
        await conn.close()
    assert left == {b"b", b"c"}

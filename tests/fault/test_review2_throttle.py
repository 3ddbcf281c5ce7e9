"""Review 2: sign-in throttling (``services/throttle.py``) against an attacker with many addresses.

The per-address bucket is keyed by the full ``request.remote`` text. One IPv6 subscriber holds a
whole /64 (2^64 addresses), so it gets a fresh per-address bucket for every request; the only
limit left is the ONE overall bucket that every sign-in of every user shares. An attacker that
drains it refuses every other user's sign-in (wallet, operator, device) with 429: a single
client denies sign-in to the whole gateway. (Behind a reverse proxy on the same host every
client is ``127.0.0.1``, which is exempt by default, so there the per-address bucket is off for
everyone and the same holds even without IPv6.)

Expected: addresses are bucketed by network (IPv6 /64, or a configured prefix), so one /64 is one
client; a victim on another network still signs in.
"""

from __future__ import annotations

import math
import time

from urllib.parse import urlsplit

import pytest
import redis.asyncio

from aiohttp.test_utils import TestClient, TestServer

from gateway import settings as settings_mod
from gateway.api.routing import SERVICES
from gateway.app import create_app
from gateway.errors import RateLimited
from gateway.services import throttle
from gateway.services.context import Services
from tests.conftest import TEST_DB_URL, TEST_REDIS_URL, make_settings
from tests.integration.world import World


async def _fresh_buckets(svc: Services) -> None:
    """The sign-in buckets of this test session's database live in Redis across its tests."""
    space = urlsplit(svc.settings.database.url).path.lstrip("/")
    # A client of its own with a generous timeout: a SCAN of the shared test database on a loaded
    # machine (two test workers) outlasts the gateway's 0.25 s Redis timeout, which is not under test.
    client = redis.asyncio.from_url(svc.settings.redis.url, socket_timeout=10)
    try:
        async for name in client.scan_iter(match=f"tb:login:{space}:*"):
            await client.delete(name)
    finally:
        await client.aclose()


async def test_one_ipv6_network_cannot_drain_the_sign_in_budget_of_everyone(world: World) -> None:
    """Attack: 150 sign-in attempts for 150 different phone numbers, each from another address of
    2001:db8:dead:beef::/64. Expected: the attacker's network is refused after its per-address
    burst (30), and a victim at 198.51.100.7 is admitted. Today: the attacker is admitted ~100
    times (the overall burst) and the victim gets 429 ``sign_in_rate_limited``."""
    svc = world.client.app[SERVICES]
    await _fresh_buckets(svc)
    burst = svc.settings.throttle.address_burst
    admitted = 0
    started_s = time.monotonic()
    for n in range(150):
        try:
            await throttle.admit(svc, throttle.Kind.WALLET, f"+8613{n:09d}", f"2001:db8:dead:beef::{n + 1:x}")
            admitted += 1
        except RateLimited:
            pass
    try:
        await throttle.admit(svc, throttle.Kind.WALLET, "+8613999999999", "198.51.100.7")
        victim = "admitted"
    except RateLimited as exc:
        victim = f"refused: {exc.code}"
    # The bucket refills at address_per_s meanwhile: on a loaded machine the 150 attempts take seconds.
    refilled = math.floor(svc.settings.throttle.address_per_s * (time.monotonic() - started_s))
    assert admitted <= burst + refilled, f"one /64 was admitted {admitted} times (burst {burst}, refilled {refilled})"
    assert admitted < 100, admitted  # far below the overall burst it drained before the fix
    assert victim == "admitted", victim


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
async def test_loopback_is_not_exempt_by_default(world: World, address: str) -> None:
    """Behind nginx/haproxy on the same host, ``request.remote`` is the proxy's loopback address for
    every client. Loopback used to be exempt by default (no per-address limit at all); the
    exemption is now opt-in (``throttle.address_exempt``, which only the test suite sets)."""
    settings = settings_mod.load(env={}, database={"url": TEST_DB_URL}, redis={"url": TEST_REDIS_URL})
    assert settings.throttle.exempt_addresses() == frozenset()
    svc = await Services.start(settings)
    try:
        await _fresh_buckets(svc)
        burst = svc.settings.throttle.address_burst
        admitted = 0
        for n in range(burst + 5):
            try:
                await throttle.admit(svc, throttle.Kind.WALLET, f"+8614{n:09d}", address)
                admitted += 1
            except RateLimited:
                pass
    finally:
        await svc.stop()
    assert admitted <= burst, f"{admitted} attempts from {address} admitted (per-address burst {burst})"


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket(clean_db: str) -> None:
    """With ``trusted_proxies`` naming the local proxy, the client address is the right-most hop of
    X-Forwarded-For that is not a proxy: one client is limited, another is not, and a client
    cannot escape its bucket by prepending hops of its own."""
    settings = make_settings(throttle={"trusted_proxies": "127.0.0.1,::1", "address_exempt": "", "address_burst": 3,
                                       "address_per_s": 0.01})
    server = TestServer(create_app(settings, workers=False), host="127.0.0.1")
    async with TestClient(server) as client:
        await _fresh_buckets(client.app[SERVICES])

        async def sign_in(forwarded: str, phone: str) -> int:
            resp = await client.post("/v1/wallet/sessions", headers={"X-Forwarded-For": forwarded},
                                     json={"phone": phone, "password": "wrong-password-1"})
            return resp.status

        # Forged hops first, then the address the proxy saw; each attempt for another account.
        attacker = [await sign_in(f"10.9.9.{n}, 203.0.113.9", f"+861370000000{n}") for n in range(5)]
        victim = await sign_in("198.51.100.7", "+8613711111111")
    assert attacker[:3] == [401, 401, 401] and attacker[3:] == [429, 429], attacker
    assert victim == 401  # a wrong password, not throttled by the attacker's bucket

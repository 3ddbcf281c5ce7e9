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

from urllib.parse import urlsplit

import pytest

from gateway.api.routing import SERVICES
from gateway.errors import RateLimited
from gateway.services import throttle
from gateway.services.context import Services
from tests.integration.world import World


async def _fresh_buckets(svc: Services) -> None:
    """The sign-in buckets of this test session's database live in Redis across its tests."""
    space = urlsplit(svc.settings.database.url).path.lstrip("/")
    async for name in svc.accel.client.scan_iter(match=f"tb:login:{space}:*"):
        await svc.accel.client.delete(name)


async def test_one_ipv6_network_cannot_drain_the_sign_in_budget_of_everyone(world: World) -> None:
    """Attack: 150 sign-in attempts for 150 different phone numbers, each from another address of
    2001:db8:dead:beef::/64. Expected: the attacker's network is refused after its per-address
    burst (30), and a victim at 198.51.100.7 is admitted. Today: the attacker is admitted ~100
    times (the overall burst) and the victim gets 429 ``sign_in_rate_limited``."""
    svc = world.client.app[SERVICES]
    await _fresh_buckets(svc)
    burst = svc.settings.throttle.address_burst
    admitted = 0
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
    assert admitted <= burst, f"one /64 was admitted {admitted} times (per-address burst {burst})"
    assert victim == "admitted", victim


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
async def test_default_exempt_loopback_is_the_address_of_every_proxied_client(world: World, address: str) -> None:
    """Behind nginx/haproxy on the same host, ``request.remote`` is the proxy's loopback address for
    every client, and loopback is exempt by default (``throttle.address_exempt``): no per-address
    limit at all. Expected (live mode at least): the exemption is opt-in, or the gateway is told
    which proxy to trust and takes the client address from it. Today: 200 attempts from "one
    client" are all admitted until the shared overall bucket runs dry."""
    svc = world.client.app[SERVICES]
    await _fresh_buckets(svc)
    burst = svc.settings.throttle.address_burst
    admitted = 0
    for n in range(burst + 5):
        try:
            await throttle.admit(svc, throttle.Kind.WALLET, f"+8614{n:09d}", address)
            admitted += 1
        except RateLimited:
            pass
    assert admitted <= burst, f"{admitted} attempts from {address} admitted (per-address burst {burst})"

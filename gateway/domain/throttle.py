"""Throttling arithmetic: token buckets and the lockout after failed sign-ins. Pure: the clock is passed in.

Invariants:
- a bucket holds between 0 and ``burst`` tokens and gains ``per_s`` a second; a request costs one
  token, so over any ``t`` seconds a bucket admits at most ``burst + per_s * t`` requests (a fixed
  one-second window admits up to twice its limit across a window edge);
- several buckets are taken all or nothing: a refused request costs no bucket a token, and the
  wait returned is the longest any of them needs;
- the lockout after the n-th failure in a row is none before ``failures_before_lockout``
  failures, then ``base_s``, doubling with every further failure, never above ``max_s``.

The Redis script in ``gateway/accel.py`` runs the same bucket arithmetic atomically on the Redis
side; ``tests/unit/test_throttle.py`` pins this module and ``tests/security/test_throttling.py``
the script.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import dataclass

COST = 1.0  # tokens one request takes
EPSILON = 1e-9  # a token refilled "exactly" on time may miss by a rounding error: it still counts


@dataclass(frozen=True, slots=True)
class Rate:
    per_s: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.per_s > 0 and self.burst >= COST):
            raise ValueError(f"a rate needs per_s > 0 and burst >= {COST}, got {self.per_s}, {self.burst}")

    @property
    def idle_s(self) -> float:
        """After this long without requests a bucket is full again: its state may be forgotten."""
        return self.burst / self.per_s


@dataclass(frozen=True, slots=True)
class Level:
    tokens: float
    at_s: float


@dataclass(frozen=True, slots=True)
class Decision:
    wait_s: float  # 0: admitted; otherwise how long until every bucket has a token again
    levels: tuple[Level, ...]  # each bucket's state to keep (charged only when admitted)

    @property
    def admitted(self) -> bool:
        return self.wait_s == 0


def tokens_at(rate: Rate, level: Level | None, now_s: float) -> float:
    """Tokens in the bucket at ``now_s``; an unknown bucket is full. A clock going back adds nothing."""
    if level is None:
        return rate.burst
    return min(rate.burst, level.tokens + max(0.0, now_s - level.at_s) * rate.per_s)


def take(buckets: Sequence[tuple[Rate, Level | None]], now_s: float) -> Decision:
    """Take one token from every bucket, or from none of them."""
    tokens = [tokens_at(rate, level, now_s) for rate, level in buckets]
    wait_s = max(
        (((COST - t) / rate.per_s) for (rate, _), t in zip(buckets, tokens, strict=True) if t < COST - EPSILON),
        default=0.0,
    )
    charge = COST if wait_s == 0 else 0.0
    return Decision(wait_s, tuple(Level(max(0.0, t - charge), now_s) for t in tokens))


@dataclass(frozen=True, slots=True)
class Backoff:
    failures_before_lockout: int
    base_s: int
    max_s: int

    def __post_init__(self) -> None:
        if not (self.failures_before_lockout >= 1 and 1 <= self.base_s <= self.max_s):
            raise ValueError("a lockout needs failures_before_lockout >= 1 and 1 <= base_s <= max_s")


def lockout_s(backoff: Backoff, failures: int) -> int:
    """How long the account is locked after its ``failures``-th failure in a row."""
    beyond = failures - backoff.failures_before_lockout
    if beyond < 0:
        return 0
    delay_s = backoff.base_s
    for _ in range(beyond):  # bounded: stops at the cap, so no huge powers of two
        if delay_s >= backoff.max_s:
            break
        delay_s *= 2
    return min(delay_s, backoff.max_s)


def schedule(backoff: Backoff) -> list[int]:
    """``lockout_s`` for failures 1, 2, ... up to the first that reaches the cap; later ones repeat the last.

    The store indexes this list in the statement that counts a failure, so the count and the lock
    are set together, atomically, while the arithmetic stays here.
    """
    delays_s: list[int] = []
    failures = 1
    while not delays_s or delays_s[-1] < backoff.max_s:
        delays_s.append(lockout_s(backoff, failures))
        failures += 1
    return delays_s


def client_network(address: str | None, ipv6_prefix_bits: int) -> str:
    """The network a client address stands for: an IPv4 address itself, an IPv6 address its
    ``/ipv6_prefix_bits`` network (one subscriber gets a whole /64, so per-address buckets must not
    be per IPv6 address), an IPv4-mapped IPv6 address its IPv4; "unknown" for anything else."""
    if not address:
        return "unknown"
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "unknown"
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, ipv6_prefix_bits), strict=False))
    return str(parsed)


def forwarded_client(remote: str | None, forwarded_for: Sequence[str], trusted: Collection[str]) -> str | None:
    """The client behind trusted proxies: ``remote`` unless it is a trusted proxy, then the right-most
    ``X-Forwarded-For`` hop that is not one (hops left of it are the client's own claims)."""
    if remote is None or remote not in trusted:
        return remote
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        if hop not in trusted:
            return hop
    return remote

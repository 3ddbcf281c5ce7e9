"""Throttling of the sign-ins that need no credential yet: wallet and operator log in, device
enrolment, device sessions.

Invariants:
- ``admit`` runs BEFORE any password is hashed or secret compared: a refused attempt costs one
  Redis round trip (or none) and at most two small statements, never an Argon2 hash;
- per client address and overall: token buckets in Redis (shared by every process), in each
  process while Redis is down; per account: ``login_failures`` in PostgreSQL, so a lockout holds
  across processes and through a Redis outage;
- an admitted attempt counts as a failure until ``succeeded`` resets the account, so parallel
  guesses cannot outrun the count; unknown accounts are counted exactly like known ones (the
  lockout tells nobody who exists); a correct password during a lockout is refused too;
- accounts are stored as keyed hashes; no subject and no secret is logged.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from functools import cache
from urllib.parse import urlsplit

import msgspec

from gateway.auth.api_keys import keyed_hash
from gateway.auth.principals import Principal
from gateway.domain import throttle
from gateway.domain.throttle import Backoff, Rate
from gateway.errors import RateLimited
from gateway.services import audit
from gateway.services.context import Services
from gateway.store import throttle as store


class Kind(StrEnum):
    WALLET = "wallet"  # subject: the phone number
    OPERATOR = "operator"  # the email, in lower case
    ENROLMENT = "enrolment"  # the enrolment code, upper case without spaces
    DEVICE = "device"  # the device id (dev_...)


class LockoutClearedView(msgspec.Struct, kw_only=True):
    object: str = "lockout_clearance"
    kind: Kind
    cleared: bool  # False: the account had no failures to forget


@dataclass(frozen=True, slots=True)
class Attempt:
    kind: Kind
    subject_hash: bytes


@cache
def _schedule(backoff: Backoff) -> list[int]:
    return throttle.schedule(backoff)


def _subject_hash(svc: Services, kind: Kind, subject: str) -> bytes:
    canonical = subject.lower() if kind is Kind.OPERATOR else subject
    return keyed_hash(svc.settings.auth.api_key_pepper, f"login:{kind.value}:{canonical}")


def _buckets(svc: Services, address: str | None) -> list[tuple[str, Rate]]:
    """Bucket names carry the database's name: deployments (and test runs) sharing one Redis stay apart."""
    settings = svc.settings.throttle
    space = urlsplit(svc.settings.database.url).path.lstrip("/")
    buckets = [(f"tb:login:{space}:all", settings.overall())]
    client = throttle.client_network(address, settings.address_ipv6_prefix_bits)
    if client not in settings.exempt_addresses() and address not in settings.exempt_addresses():
        buckets.append((f"tb:login:{space}:addr:{client}", settings.per_address()))
    return buckets


async def admit(svc: Services, kind: Kind, subject: str, address: str | None) -> Attempt:
    """Let one sign-in attempt through, counted as a failure until it succeeds, or raise 429."""
    wait_s = await svc.accel.take(_buckets(svc, address))
    if wait_s > 0:
        raise RateLimited("too many sign-in attempts; retry later", code="sign_in_rate_limited",
                          retry_after_s=math.ceil(wait_s))
    attempt = Attempt(kind, _subject_hash(svc, kind, subject))
    settings = svc.settings.throttle
    now = svc.now()
    async with svc.db.connection() as conn:
        locked_until = await store.count_attempt(
            conn, kind.value, attempt.subject_hash, now, now - timedelta(seconds=settings.failures_forget_s),
            _schedule(settings.backoff()),
        )
    if locked_until is not None:
        raise RateLimited("too many failed sign-ins for this account; retry later", code="sign_in_locked",
                          retry_after_s=math.ceil((locked_until - now).total_seconds()))
    return attempt


async def succeeded(svc: Services, attempt: Attempt) -> None:
    """The credentials were right: the account's failures are forgotten."""
    async with svc.db.connection() as conn:
        await store.forget(conn, attempt.kind.value, attempt.subject_hash)


async def clear(svc: Services, who: Principal | None, kind: Kind, subject: str) -> LockoutClearedView:
    """An operator lifts an account's lockout and forgets its failures. The audit event names the
    account by its keyed hash (as an id), never by the phone number, e-mail or code."""
    subject_hash = _subject_hash(svc, kind, subject)
    async with svc.db.connection() as conn, conn.transaction():
        cleared = await store.forget(conn, kind.value, subject_hash)
        view = LockoutClearedView(kind=kind, cleared=cleared)
        await audit.record(conn, who, "lockout.cleared", uuid.UUID(bytes=subject_hash[:16]), view, merchant_id=None)
    return view

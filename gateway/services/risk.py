"""Risk rules: the operator's use cases, and the check every authorisation makes.

Invariants:
- ``check`` runs in ``payments.authorize_locked`` (every way of paying: by id, QR, pay-code, tap),
  after the holder's spend row is locked, so the holder's payments are counted one at a time and N
  concurrent payments against a velocity limit of K never authorise more than K; it reads the active
  rules from the database (a rule created or disabled applies at once on the general path);
- a match declines the payment with ``risk_declined`` (HTTP 402), a message that names no rule;
  nothing of the payment changes and no money moves;
- the one-statement path (``payments.decide_payment``) asks ``fast_path_allowed``, answered from
  memory: True only when this process's last read of the rules, younger than ``FRESH_S``, found none.
  So with any rule active every payment takes the general path, and a rule created in another
  process reaches the fast path of this one within ``REFRESH_S`` seconds: the app re-reads the rules
  every ``REFRESH_S`` in the background (``refreshing``), and after each change made in this process;
- creating and disabling rules are idempotent (Idempotency-Key) and audited (``risk_rule.created``,
  ``risk_rule.disabled``) in their own transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Literal

import msgspec

from gateway.auth.principals import Principal
from gateway.domain import risk
from gateway.domain.ids import Kind, decode, encode
from gateway.domain.money import currency as check_currency
from gateway.errors import Declined, InvalidRequest, NotFound
from gateway.services import audit, pages
from gateway.services.context import Services
from gateway.services.idempotency import Reply, RequestIdentity
from gateway.services.pages import PageRequest
from gateway.store import risk as store
from gateway.store.db import Connection, Database
from gateway.tasks import cancel_and_wait

REFRESH_S = 2.0
FRESH_S = 3 * REFRESH_S  # after 3 failed refreshes the cache cannot tell: the general path runs
log = logging.getLogger(__name__)


@dataclass
class RiskCache:
    """Whether any rule was active at this process's last read (see the module's invariants)."""

    rules: tuple[risk.Rule, ...] = ()
    read_at_s: float | None = None
    clock: Callable[[], float] = field(default=time.monotonic)

    def saw(self, rules: tuple[risk.Rule, ...]) -> None:
        self.rules = rules
        self.read_at_s = self.clock()

    def none_active(self) -> bool:
        return self.read_at_s is not None and self.clock() - self.read_at_s <= FRESH_S and not self.rules


CACHE = RiskCache()


def fast_path_allowed() -> bool:
    return CACHE.none_active()


async def load(conn: Connection) -> tuple[risk.Rule, ...]:
    rules = tuple(store.to_domain(r) for r in await store.active(conn))
    CACHE.saw(rules)
    return rules


@contextlib.asynccontextmanager
async def refreshing(db: Database) -> AsyncIterator[None]:
    """Keep this process's view of the active rules fresh while the block runs."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                async with db.connection() as conn:
                    await load(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next period tries again; meanwhile the view goes stale
                log.warning("risk rules load failed", extra={"error": type(exc).__name__})

    with contextlib.suppress(Exception):  # the first read before serving; the loop retries a failure
        async with db.connection() as conn:
            await load(conn)
    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        await cancel_and_wait([task])


def declined() -> Declined:
    return Declined("the payment was declined", code="risk_declined")


async def check(conn: Connection, holder_id: uuid.UUID, currency: str, amount_minor: int, now: datetime) -> None:
    """Raise ``risk_declined`` when a rule matches this payment (call it with the holder's spend row locked)."""
    rules = await load(conn)
    if not rules:
        return
    if risk.blocked(rules, holder_id):
        raise declined()
    for rule in risk.velocity_rules(rules):
        assert rule.window_s is not None
        recent = await store.recent(conn, holder_id, currency, now, rule.window_s)
        if risk.over_velocity(rule, recent, currency, amount_minor):
            raise declined()


# --- the operator's use cases --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewRule:
    kind: str
    wallet: str | None
    currency: str | None
    window_s: int | None
    max_count: int | None
    max_amount: int | None


class RiskRuleView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "risk_rule"
    kind: str
    outcome: str
    wallet: str | None
    currency: str | None
    window_s: int | None
    max_count: int | None
    max_amount: int | None
    status: Literal["active", "disabled"]
    created: int


class RiskRuleList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[RiskRuleView]
    has_more: bool


def rule_id(value: uuid.UUID) -> str:
    return encode(Kind.RISK_RULE, value)


def rule_view(row: Any) -> RiskRuleView:
    return RiskRuleView(
        id=rule_id(row["id"]), kind=row["kind"], outcome=row["outcome"],
        wallet=None if row["holder_id"] is None else encode(Kind.WALLET_HOLDER, row["holder_id"]),
        currency=row["currency"], window_s=row["window_s"], max_count=row["max_count"],
        max_amount=row["max_amount_minor"], status="disabled" if row["disabled_at"] is not None else "active",
        created=int(row["created_at"].timestamp()))


def _terms(req: NewRule) -> risk.Rule:
    kind = risk.RuleKind(req.kind)
    holder_id = None
    if req.wallet is not None:
        holder_id = decode(Kind.WALLET_HOLDER, req.wallet)
        if holder_id is None:
            raise InvalidRequest("not a wallet holder id", code="invalid_wallet", param="wallet")
    code = None if req.currency is None else check_currency(req.currency).code
    if kind is risk.RuleKind.BLOCKED_WALLET:
        if holder_id is None:
            raise InvalidRequest("a blocked_wallet rule names its wallet", code="invalid_wallet", param="wallet")
        return risk.Rule(uuid.uuid4(), kind, holder_id=holder_id)
    if req.window_s is None or not 1 <= req.window_s <= 2_592_000:
        raise InvalidRequest("window_s: 1 to 2592000 seconds", code="invalid_window", param="window_s")
    if req.max_count is not None and req.max_count < 1:
        raise InvalidRequest("max_count: at least 1", code="invalid_max_count", param="max_count")
    if req.max_amount is not None and (req.max_amount < 1 or code is None):
        raise InvalidRequest("max_amount: a positive amount in minor units, with its currency",
                             code="invalid_max_amount", param="max_amount")
    if req.max_count is None and req.max_amount is None:
        raise InvalidRequest("give max_count or max_amount", code="invalid_max_count", param="max_count")
    return risk.Rule(uuid.uuid4(), kind, currency=code, window_s=req.window_s, max_count=req.max_count,
                     max_amount_minor=req.max_amount)


async def create(svc: Services, who: Principal, req: NewRule, identity: RequestIdentity) -> Reply:
    terms = _terms(req)

    async def work(conn: Connection) -> tuple[int, Any]:
        if terms.holder_id is not None and not await store.holder_exists(conn, terms.holder_id):
            raise InvalidRequest("no such wallet holder", code="invalid_wallet", param="wallet")
        view = rule_view(await store.insert(conn, terms, svc.now()))
        await audit.record(conn, who, "risk_rule.created", terms.id, view, merchant_id=None)
        return 201, view

    reply = await svc.idempotency.run(identity, work)
    async with svc.db.connection() as conn:  # this process's fast path sees the change at once
        await load(conn)
    return reply


def _uuid(text: str) -> uuid.UUID:
    value = decode(Kind.RISK_RULE, text)
    if value is None:
        raise NotFound(f"no such risk rule: {text}", param="id")
    return value


async def disable(svc: Services, who: Principal, text_id: str, identity: RequestIdentity) -> Reply:
    """Disable a rule now; disabling it again answers it unchanged."""
    rid = _uuid(text_id)

    async def work(conn: Connection) -> tuple[int, Any]:
        row = await store.get(conn, rid, for_update=True)
        if row is None:
            raise NotFound(f"no such risk rule: {text_id}", param="id")
        was_disabled = row["disabled_at"] is not None
        view = rule_view(await store.disable(conn, rid, svc.now()))
        if not was_disabled:
            await audit.record(conn, who, "risk_rule.disabled", rid, view, merchant_id=None)
        return 200, view

    reply = await svc.idempotency.run(identity, work)
    async with svc.db.connection() as conn:  # this process's fast path sees the change at once
        await load(conn)
    return reply


async def get(svc: Services, text_id: str) -> RiskRuleView:
    rid = _uuid(text_id)
    async with svc.db.connection() as conn:
        row = await store.get(conn, rid)
    if row is None:
        raise NotFound(f"no such risk rule: {text_id}", param="id")
    return rule_view(row)


async def list_rules(svc: Services, page: PageRequest) -> RiskRuleList:
    async with svc.db.connection() as conn:
        rows, has_more = await pages.read(conn, store.all_rules(), page, partial(decode, Kind.RISK_RULE))
    return RiskRuleList(data=[rule_view(r) for r in rows], has_more=has_more)

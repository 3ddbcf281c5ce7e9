"""What every use case needs, built once per process by the app."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from gateway import metrics
from gateway.accel import Accelerator
from gateway.auth import passwords
from gateway.auth.sealing import Sealer
from gateway.auth.tokens import TokenIssuer
from gateway.domain.limits import Tier
from gateway.services.idempotency import Idempotency
from gateway.services.campaign_cache import CampaignCache
from gateway.services.key_cache import ApiKeyCache
from gateway.services.revocations import SessionRevocations
from gateway.services.risk_cache import RiskRules
from gateway.settings import PromotionSettings, Settings
from gateway.services.batching import Batcher
from gateway.store import payments as payment_store
from gateway.store.db import Connection, Database
from gateway.store.replica import StaleReads
from gateway.store.idempotency import Done


@dataclass(frozen=True)
class Services:
    settings: Settings
    db: Database
    accel: Accelerator
    idempotency: Idempotency
    tokens: TokenIssuer
    sealer: Sealer
    api_keys: ApiKeyCache  # answers only while the app keeps its listener (``listening_while``)
    tiers: dict[int, Tier] = field(default_factory=dict)
    pin_thresholds_minor: dict[str, int] = field(default_factory=dict)
    limits_zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    pay_batches: PayBatcher | None = None  # group commit of wallet payments (None: each its own statement)
    create_batches: CreateBatcher | None = None  # group commit of payment creates (None: each its own statement)
    revocations: SessionRevocations | None = None  # revoked wallet sessions (None: the database says, each time)
    codes_due: asyncio.Event = field(default_factory=asyncio.Event)  # wakes this process's sign-in code sender
    checks_due: asyncio.Event = field(default_factory=asyncio.Event)  # wakes this process's ledger check worker
    # The live promotion campaigns; loaded only while the app keeps it ``refreshing``.
    campaigns: CampaignCache = field(default_factory=lambda: CampaignCache(PromotionSettings()))
    reads: StaleReads | None = None  # reads that may lag (None: the primary, ``db``)
    # Whether any risk rule is active, as the one-statement payment path asks it; kept ``refreshing`` by the app.
    risk_rules: RiskRules = field(default_factory=RiskRules)

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)

    def stale(self) -> AbstractAsyncContextManager[Connection]:
        """A connection for a read that may lag (lists, history, reports, charts): the replica's when one is
        set (gateway.store.replica). Never for the money path or anything a decision is taken on."""
        return self.reads.connection() if self.reads is not None else self.db.connection()

    def local_day(self, at: datetime) -> date:
        """The day the daily caps count in."""
        return at.astimezone(self.limits_zone).date()

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        passwords.use_profile(settings.auth.password_hash_profile)
        db = await Database.connect(settings.database)
        accel = Accelerator(settings.redis)
        tokens = TokenIssuer(settings.auth.jwt_issuer, settings.auth.jwt_key_ring(), settings.auth.jwt_active_kid)
        return cls(
            settings, db, accel, Idempotency(db, accel, settings.idempotency), tokens, Sealer(settings.auth.api_key_pepper),
            ApiKeyCache(db, settings.auth),
            tiers=settings.tiers.tiers(), pin_thresholds_minor=settings.wallet.pin_threshold_minor,
            limits_zone=ZoneInfo(settings.wallet.limits_timezone), pay_batches=_pay_batcher(db, accel, settings),
            create_batches=_create_batcher(db, settings),
            revocations=SessionRevocations(db, settings),
            campaigns=CampaignCache(settings.promotions), reads=await StaleReads.connect(db, settings.database),
        )

    async def stop(self) -> None:
        await self.accel.close()
        if self.reads is not None:
            await self.reads.close()
        await self.db.close()


PayBatcher = Batcher[tuple[payment_store.PaidAtOnce, Done | None], bool]


def _pay_batcher(db: Database, accel: Accelerator, settings: Settings) -> PayBatcher | None:
    if settings.payments.group_commit_items_max == 0:
        return None

    async def run(items: list[tuple[payment_store.PaidAtOnce, Done | None]]) -> list[bool]:
        metrics.GROUP_COMMIT_BATCH_SIZE.observe(len(items))
        applied = await pay_counted(db, accel, items)
        metrics.GROUP_COMMIT_FALLBACKS.inc(applied.count(False))
        return applied

    return Batcher(run, settings.payments.group_commit_items_max, settings.payments.group_commit_in_flight_max)


CreateBatcher = Batcher[tuple[payment_store.CreatedAtOnce, Done | None], bool]


def _create_batcher(db: Database, settings: Settings) -> CreateBatcher | None:
    """Creates that arrive together go in one statement and one commit (``store.payments.create_batch``),
    with the same limits as the payments' group commit."""
    if settings.payments.group_commit_items_max == 0:
        return None

    async def run(items: list[tuple[payment_store.CreatedAtOnce, Done | None]]) -> list[bool]:
        metrics.CREATE_BATCH_SIZE.observe(len(items))
        async with db.connection() as conn:
            applied = await payment_store.create_batch(conn, items)
        metrics.CREATE_BATCH_FALLBACKS.inc(applied.count(False))
        return applied

    return Batcher(run, settings.payments.group_commit_items_max, settings.payments.group_commit_in_flight_max)


async def pay_counted(db: Database, accel: Accelerator,
                      items: list[tuple[payment_store.PaidAtOnce, Done | None]]) -> list[bool]:
    """Pay payments in one statement (``store.payments.pay_batch``) after charging the ones the risk rules
    count per wallet, device or merchant in their velocity windows, all in one Redis script call (``accel
    .windows_take_all``: each payment in all its windows or in none). An item a window refuses, or that
    Redis gives no answer for, is False and not written: its general path counts, decides and records.
    A charged item whose statement falls back keeps its entries: its general path counts it once there
    (``services.risk``)."""
    counted = [(n, paid, paid.risk) for n, (paid, _) in enumerate(items) if paid.risk is not None and paid.risk.windows]
    allowed = [True] * len(items)
    if counted:
        found = await accel.windows_take_all([(risk.windows, paid.now.timestamp(), paid.payment.id.hex)
                                              for _, paid, risk in counted])
        for at, (n, _, _) in enumerate(counted):
            allowed[n] = found is not None and found[at].taken
    todo = [item for item, ok in zip(items, allowed, strict=True) if ok]
    if not todo:
        return allowed
    async with db.connection() as conn:
        written = iter(await payment_store.pay_batch(conn, todo))
    return [ok and next(written) for ok in allowed]

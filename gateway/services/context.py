"""What every use case needs, built once per process by the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from gateway.accel import Accelerator
from gateway.auth.sealing import Sealer
from gateway.auth.tokens import TokenIssuer
from gateway.domain.limits import Tier
from gateway.services.idempotency import Idempotency
from gateway.services.key_cache import ApiKeyCache
from gateway.settings import Settings
from gateway.store.db import Database


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

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)

    def local_day(self, at: datetime) -> date:
        """The day the daily caps count in."""
        return at.astimezone(self.limits_zone).date()

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        db = await Database.connect(settings.database)
        accel = Accelerator(settings.redis)
        tokens = TokenIssuer(settings.auth.jwt_issuer, settings.auth.jwt_key_ring(), settings.auth.jwt_active_kid)
        return cls(
            settings, db, accel, Idempotency(db, accel, settings.idempotency), tokens, Sealer(settings.auth.api_key_pepper),
            ApiKeyCache(db, settings.auth),
            tiers=settings.tiers.tiers(), pin_thresholds_minor=settings.wallet.pin_threshold_minor,
            limits_zone=ZoneInfo(settings.wallet.limits_timezone),
        )

    async def stop(self) -> None:
        await self.accel.close()
        await self.db.close()

"""What every use case needs, built once per process by the app."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.accel import Accelerator
from gateway.auth.tokens import TokenIssuer
from gateway.services.idempotency import Idempotency
from gateway.settings import Settings
from gateway.store.db import Database


@dataclass(frozen=True)
class Services:
    settings: Settings
    db: Database
    accel: Accelerator
    idempotency: Idempotency
    tokens: TokenIssuer

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        db = await Database.connect(settings.database)
        accel = Accelerator(settings.redis)
        tokens = TokenIssuer(settings.auth.jwt_issuer, settings.auth.jwt_key_ring(), settings.auth.jwt_active_kid)
        return cls(settings, db, accel, Idempotency(db, accel, settings.idempotency), tokens)

    async def stop(self) -> None:
        await self.accel.close()
        await self.db.close()

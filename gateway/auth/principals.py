"""Who a request acts as. Every query the services run is scoped by the principal.

Invariant: a merchant principal only ever sees objects whose ``merchant_id`` is its own; a
wallet principal only its holder's objects; everything else answers "not found".
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum


class PrincipalKind(StrEnum):
    OPERATOR = "operator"
    MERCHANT = "merchant"  # secret API key
    PUBLISHABLE = "publishable"  # publishable API key: read-only checkout view
    WALLET = "wallet"
    DEVICE = "device"  # an enrolled POS agent: acts for its merchant, store and terminal


@dataclass(frozen=True, slots=True)
class Principal:
    kind: PrincipalKind
    id: uuid.UUID  # operator id, API key id, or wallet holder id
    merchant_id: uuid.UUID | None = None
    role: str | None = None
    device_id: str | None = None  # the wallet app's device, from its login
    session_id: uuid.UUID | None = None  # the wallet token's session (None: a token from before sessions)
    store_id: uuid.UUID | None = None  # a POS device's store and terminal
    terminal_id: uuid.UUID | None = None

    @property
    def idempotency_scope(self) -> str:
        """Keys are scoped per account: per merchant for API keys (so a rotated key still replays)."""
        if self.kind is PrincipalKind.MERCHANT:
            return f"merchant:{self.merchant_id}"
        return f"{self.kind.value}:{self.id}"

    @property
    def rate_limit_scope(self) -> str:
        return self.idempotency_scope

"""The wallet's payment PIN: set, verify, count failures, lock.

Invariant: every wrong PIN is counted in its own committed transaction (whatever happens to the
payment it was sent with), and the failure that reaches ``pin_failures_max`` locks the wallet
for payments until an operator unlocks it.
"""

from __future__ import annotations

import uuid

from gateway.auth import passwords
from gateway.domain.limits import PIN_LENGTH, pin_required, valid_pin_format
from gateway.errors import Declined, Forbidden, InvalidRequest
from gateway.services.context import Services
from gateway.store import wallets as store


def _locked() -> Forbidden:
    return Forbidden(
        "payments from this wallet are locked after too many wrong PINs; an operator can unlock it",
        code="wallet_locked",
    )


def needed(svc: Services, currency: str, amount_minor: int) -> bool:
    return pin_required(svc.pin_thresholds_minor, currency, amount_minor)


async def verify(svc: Services, holder_id: uuid.UUID, pin: str | None) -> None:
    if pin is None:
        raise Declined("this amount needs the wallet's payment PIN", code="pin_required", param="pin")
    async with svc.db.connection() as conn:
        state = await store.pin_state(conn, holder_id)
    if state is None or state["payments_locked_at"] is not None:
        raise _locked()
    if state["pin_hash"] is None:
        raise Declined("set a payment PIN first", code="pin_not_set", param="pin")
    ok = await passwords.verify_password(state["pin_hash"], pin)
    async with svc.db.connection() as conn:
        if ok:
            await store.reset_pin_failures(conn, holder_id)
            return
        failed = await store.record_pin_failure(conn, holder_id, svc.settings.wallet.pin_failures_max)
    if failed["payments_locked_at"] is not None:
        raise _locked()
    raise Declined("the PIN is wrong", code="incorrect_pin", param="pin",
                   attempts_remaining=svc.settings.wallet.pin_failures_max - failed["pin_failures"])


async def set_pin(svc: Services, holder_id: uuid.UUID, pin: str, current_pin: str | None) -> None:
    if not valid_pin_format(pin):
        raise InvalidRequest(f"a PIN is {PIN_LENGTH} digits, not all the same", code="invalid_pin", param="pin")
    async with svc.db.connection() as conn:
        state = await store.pin_state(conn, holder_id)
    if state is not None and state["pin_hash"] is not None:
        await verify(svc, holder_id, current_pin)  # changing a PIN needs the old one
    hashed = await passwords.hash_password(pin)
    async with svc.db.connection() as conn:
        await store.set_pin(conn, holder_id, hashed)

"""The wallet's payment PIN: set, verify, count failures, lock.

Invariant: every attempt is counted in its own committed transaction before its PIN is even
checked (so concurrent guesses cannot outrun the limit), whatever happens to the payment it came
with; a right PIN clears the count, and the failure that reaches ``pin_failures_max`` locks the
wallet for payments until an operator unlocks it.
"""

from __future__ import annotations

import logging
import uuid

from gateway.auth import passwords
from gateway.domain.limits import PIN_LENGTH, pin_required, valid_pin_format
from gateway.errors import Declined, Forbidden, InvalidRequest
from gateway.services.context import Services
from gateway.store import wallets as store
from gateway.store.db import Connection

log = logging.getLogger(__name__)


def locked_error() -> Forbidden:
    return Forbidden(
        "payments from this wallet are locked after too many wrong PINs; an operator can unlock it",
        code="wallet_locked",
    )


def needed(svc: Services, currency: str, amount_minor: int) -> bool:
    return pin_required(svc.pin_thresholds_minor, currency, amount_minor)


async def verify(svc: Services, holder_id: uuid.UUID, pin: str | None, conn: Connection | None = None) -> None:
    """Check the PIN; ``conn`` (outside a transaction) is used if given, else pooled connections."""
    if pin is None:
        raise Declined("this amount needs the wallet's payment PIN", code="pin_required", param="pin")
    if conn is not None:
        await _verify(svc, holder_id, pin, conn)
        return
    async with svc.db.connection() as own:
        await _verify(svc, holder_id, pin, own)


async def _verify(svc: Services, holder_id: uuid.UUID, pin: str, conn: Connection) -> None:
    state = await store.pin_state(conn, holder_id)
    if state is None or state["payments_locked_at"] is not None:
        raise locked_error()
    if state["pin_hash"] is None:
        raise Declined("set a payment PIN first", code="pin_not_set", param="pin")
    failures_max = svc.settings.wallet.pin_failures_max
    reserved = await store.reserve_pin_attempt(conn, holder_id, failures_max)
    if reserved is None:
        raise locked_error()
    if await passwords.verify_password(reserved["pin_hash"], pin):
        await store.pin_attempt_succeeded(conn, holder_id)
        return
    failed = await store.pin_attempt_failed(conn, holder_id, failures_max)
    log.warning("wrong payment PIN", extra={"holder_id": str(holder_id), "pin_failures": failed["pin_failures"],
                                            "locked": failed["payments_locked_at"] is not None})
    if failed["payments_locked_at"] is not None:
        raise locked_error()
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

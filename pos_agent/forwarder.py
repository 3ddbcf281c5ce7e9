"""The forwarder: what the journal still owes the gateway, delivered in the background.

Three kinds of debt, in this order each round:
1. Offline-approved taps, in approval order (``POST /v1/tap_payments`` with the tap's own
   ``terminal_transaction_id`` as key and the journalled body, byte for byte the same each time).
2. Reversals that could not be sent at the end of their sale.
3. ``resolve`` entries: attempts whose outcome stayed unknown; found by merchant reference once
   they are old enough that no request can still be executing, and reversed.

Invariants:
- An entry is marked done only on a definite answer (2xx, or a 4xx other than 409 in-use);
  connection failures, timeouts and 5xx leave it pending and end the round with backoff.
- Offline taps are forwarded strictly in order: a failed one stops the round, because a wallet's
  later tap (higher ATC) reaching the gateway first would make the earlier one a replay.
- A declined offline tap is final (the merchant bears it); its token is then refused offline.
- Rounds are bounded (``batch_max`` entries each), the backoff is capped and jittered, and one
  lock keeps the background loop and ``drain_token`` from interleaving.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Final

from pos_agent.checkout import reverse_payment
from pos_agent.errors import (
    DeviceAuthError,
    GatewayError,
    GatewayRejected,
    GatewayUnreachable,
    JournalError,
    OutcomeUnknown,
)
from pos_agent.gateway_client import GatewayClient
from pos_agent.journal import AsyncJournal, Journal, OfflineTap, OfflineTapState, OpKind, OpState, Operation
from pos_agent.settings import Settings

__all__ = ["Forwarder", "RoundResult"]

log = logging.getLogger(__name__)

RESOLVE_MIN_AGE_MARGIN_S: Final = 5.0
IDEMPOTENCY_KEY_REUSED: Final = "idempotency_key_reused"


class RoundResult:
    """Counts of one round; ``blocked`` when the gateway could not be reached."""

    def __init__(self) -> None:
        self.forwarded = 0
        self.declined = 0
        self.reversed = 0
        self.resolved = 0
        self.blocked = False

    def __repr__(self) -> str:
        return (f"RoundResult(forwarded={self.forwarded}, declined={self.declined}, reversed={self.reversed}, "
                f"resolved={self.resolved}, blocked={self.blocked})")


class Forwarder:
    def __init__(
        self,
        settings: Settings,
        client: GatewayClient,
        journal: AsyncJournal,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings.forwarder
        self._resolve_min_age_s = 2 * settings.gateway.request_timeout_s + RESOLVE_MIN_AGE_MARGIN_S
        self._client = client
        self._journal = journal
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Start a round now (something new was journalled)."""
        self._wake.set()

    async def run_forever(self) -> None:
        delay_s = self._settings.interval_s
        while True:
            try:
                result = await self.run_round()
            except (GatewayError, JournalError) as exc:  # the round ends; the entries stay pending
                log.error("forwarder round failed (%s); retrying later", exc)
                result = RoundResult()
                result.blocked = True
            if result.blocked:
                delay_s = min(delay_s * 2, self._settings.backoff_max_s)
            else:
                delay_s = self._settings.interval_s
            if result.forwarded or result.declined or result.reversed or result.resolved:
                log.info("forwarder round: %r", result)
            self._wake.clear()
            try:
                async with asyncio.timeout(self._rng.uniform(0.5, 1.0) * delay_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def run_round(self) -> RoundResult:
        result = RoundResult()
        async with self._lock:
            await self._forward_taps(result, token_pan=None)
            if not result.blocked:
                await self._send_reversals(result)
            if not result.blocked:
                await self._resolve_unknowns(result)
        return result

    async def drain_token(self, token_pan: str) -> None:
        """Forward this wallet token's pending offline taps now (before a newer tap of it)."""
        async with self._lock:
            result = RoundResult()
            await self._forward_taps(result, token_pan=token_pan)
            if result.forwarded or result.declined:
                log.info("forwarded a wallet's offline taps before its new tap: %r", result)

    # -- offline taps ------------------------------------------------------------------------

    async def _forward_taps(self, result: RoundResult, *, token_pan: str | None) -> None:
        batch_max = self._settings.batch_max
        taps = await self._journal.call(lambda j: j.pending_offline_taps(batch_max, token_pan=token_pan))
        for tap in taps:
            if not await self._forward_one(tap, result):
                result.blocked = True
                return

    async def _forward_one(self, tap: OfflineTap, result: RoundResult) -> bool:
        ttid = tap.terminal_transaction_id
        try:
            payment = await self._client.tap_payment(tap.body, idempotency_key=ttid)
        except (GatewayUnreachable, OutcomeUnknown) as exc:
            await self._journal.call(functools.partial(Journal.offline_tap_attempted, terminal_transaction_id=ttid,
                                                       outcome=exc.code))
            log.info("forwarder: offline tap %s not delivered yet: %s", ttid, exc)
            return False
        except DeviceAuthError:
            raise
        except GatewayRejected as exc:
            if exc.error_code == IDEMPOTENCY_KEY_REUSED:
                # The gateway saw this id with the online body (offline_approved_at null): that
                # attempt is the one that counts; its payment carries the same reference.
                found = await self._client.find_payments(str(tap.body.get("merchant_reference")))
                if found and found[0].succeeded:
                    paid = found[0]
                    await self._journal.call(lambda j: j.finish_offline_tap(
                        ttid, OfflineTapState.FORWARDED, outcome=paid.status, payment_id=paid.id))
                    result.forwarded += 1
                    return True
            await self._journal.call(functools.partial(Journal.finish_offline_tap, terminal_transaction_id=ttid,
                                                       state=OfflineTapState.DECLINED, outcome=exc.error_code))
            log.warning("forwarder: offline tap %s (%d minor) declined by the gateway: %s", ttid,
                        tap.amount_minor, exc.error_code)
            result.declined += 1
            return True
        if payment.succeeded:
            await self._journal.call(lambda j: j.finish_offline_tap(ttid, OfflineTapState.FORWARDED,
                                                                    outcome=payment.status, payment_id=payment.id))
            log.info("forwarder: offline tap %s accepted as %s", ttid, payment.id)
            result.forwarded += 1
        else:
            await self._journal.call(lambda j: j.finish_offline_tap(ttid, OfflineTapState.DECLINED,
                                                                    outcome=f"status_{payment.status}",
                                                                    payment_id=payment.id))
            result.declined += 1
        return True

    # -- compensations -----------------------------------------------------------------------

    async def _pending(self, kind: OpKind, created_before: float) -> list[Operation]:
        batch_max = self._settings.batch_max
        return await self._journal.call(
            lambda j: j.pending_operations((kind,), created_before=created_before, limit=batch_max))

    async def _send_reversals(self, result: RoundResult) -> None:
        for op in await self._pending(OpKind.REVERSE, self._clock()):
            assert op.payment_id is not None
            if not await reverse_payment(self._client, self._journal, op.sale_reference, op.payment_id):
                result.blocked = True
                return
            result.reversed += 1

    async def _resolve_unknowns(self, result: RoundResult) -> None:
        for op in await self._pending(OpKind.RESOLVE, self._clock() - self._resolve_min_age_s):
            try:
                found = await self._client.find_payments(op.reference)
            except DeviceAuthError:
                raise
            except GatewayError as exc:
                log.info("forwarder: cannot resolve %s yet: %s", op.reference, exc)
                result.blocked = True
                return
            for payment in found:
                if payment.reversed:
                    continue
                if not await reverse_payment(self._client, self._journal, op.sale_reference, payment.id):
                    result.blocked = True
                    return
            await self._finish(op.idempotency_key, f"found_{len(found)}")
            result.resolved += 1

    async def _finish(self, idempotency_key: str, outcome: str) -> None:
        await self._journal.call(lambda j: j.finish_operation(idempotency_key, OpState.DONE, outcome=outcome))

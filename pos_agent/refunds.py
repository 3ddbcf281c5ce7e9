"""Counter refunds: the register's credit (or refund) request refunds a sale's payment.

The register names the sale by the number the agent answered it with (the Concert private data,
``000042`` for sale ``T1-000042``); the journal knows the sale's payment.

Invariants:
- Only a sale the register was answered "approved" for is refunded, and only through its own
  payment (an offline tap's payment once the forwarder delivered it).
- Idempotent: the key is derived from the request (sale, amount) and journalled before it is
  sent. A request repeated because its answer never reached the register (or whose outcome was
  unknown) resends the same key, so the gateway replays the first refund instead of making a
  second; once the register has acknowledged a refund's answer, the next request for that sale
  and amount is a new refund (a second, equal partial refund).
- The whole refund is bounded by ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Final

from pos_agent.errors import GatewayError, GatewayRejected, GatewayUnreachable, JournalError, OutcomeUnknown
from pos_agent.gateway_client import GatewayClient
from pos_agent.journal import AsyncJournal, Journal, OpKind, OpState, SaleState

__all__ = ["ANSWERED", "CounterRefunds", "RefundOutcome", "refund_key"]

log = logging.getLogger(__name__)

ANSWERED: Final = "answered"
"""The outcome of a refund operation whose answer the register acknowledged."""
REFUND_REASON: Final = "counter refund"


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    approved: bool
    reason: str
    """The refund's id when approved; why not otherwise."""
    key: str | None = None
    """The journalled operation (to mark answered once the register has the answer)."""


def refund_key(sale_reference: str, amount_minor: int, ordinal: int) -> str:
    return f"refund-{sale_reference}-{amount_minor}-{ordinal}"


class CounterRefunds:
    def __init__(self, client: GatewayClient, journal: AsyncJournal, *, terminal_label: str, timeout_s: float) -> None:
        self._client = client
        self._journal = journal
        self._terminal_label = terminal_label
        self._timeout_s = timeout_s

    async def refund(self, sale_number: str, amount_minor: int) -> RefundOutcome:
        if not sale_number.strip():
            return RefundOutcome(False, "sale_number_required")
        reference = f"{self._terminal_label}-{sale_number.strip()}"
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._refund(reference, amount_minor)
        except TimeoutError:
            return RefundOutcome(False, "outcome_unknown")
        except JournalError as exc:
            log.error("refund of %s: %s", reference, exc)
            return RefundOutcome(False, exc.code)

    async def mark_answered(self, key: str) -> None:
        await self._journal.call(functools.partial(Journal.finish_operation, key=key, state=OpState.DONE,
                                                   outcome=ANSWERED))

    async def _refund(self, reference: str, amount_minor: int) -> RefundOutcome:
        sale = await self._journal.call(functools.partial(Journal.sale, reference=reference))
        if sale is None:
            return RefundOutcome(False, "sale_unknown")
        if not sale.approved or sale.state is not SaleState.ANSWERED:
            return RefundOutcome(False, "sale_not_approved")
        if amount_minor > sale.amount_minor:
            return RefundOutcome(False, "amount_too_large")
        payment_id = await self._payment_of(reference, sale.method, sale.payment_id)
        if payment_id is None:
            return RefundOutcome(False, "payment_not_forwarded")
        key = await self._key(reference, amount_minor)
        await self._journal.call(functools.partial(
            Journal.record_operation, key=key, kind=OpKind.REFUND, sale_reference=reference, reference=reference,
            body={"payment": payment_id, "amount": amount_minor}, payment_id=payment_id))
        try:
            refund = await self._client.refund(payment_id, amount_minor=amount_minor, reason=REFUND_REASON,
                                               idempotency_key=key, timeout_s=self._timeout_s)
        except OutcomeUnknown:
            return RefundOutcome(False, "outcome_unknown")  # pending: the register's retry resends the key
        except GatewayUnreachable:
            await self._finish(key, OpState.FAILED, "unreachable")
            return RefundOutcome(False, "gateway_unreachable")
        except GatewayRejected as exc:
            await self._finish(key, OpState.FAILED, exc.error_code)
            return RefundOutcome(False, exc.error_code)
        except GatewayError as exc:
            return RefundOutcome(False, exc.code)
        await self._finish(key, OpState.DONE, refund.status)
        log.info("sale %s: refunded %d of %s (%s)", reference, amount_minor, payment_id, refund.id)
        return RefundOutcome(True, refund.id, key)

    async def _payment_of(self, reference: str, method: str | None, payment_id: str | None) -> str | None:
        if method != "tap_offline":
            return payment_id
        taps = await self._journal.call(functools.partial(Journal.offline_taps_of_sale, sale_reference=reference))
        return next((tap.payment_id for tap in taps if tap.payment_id is not None), None)

    async def _key(self, reference: str, amount_minor: int) -> str:
        """The key of this request: an earlier refund of the sale and amount that may have been made
        but whose answer the register never acknowledged is this one again; otherwise the next one."""
        operations = await self._journal.call(functools.partial(Journal.operations_of_sale, sale_reference=reference))
        refunds = [op for op in operations if op.kind is OpKind.REFUND]
        for op in refunds:
            if op.body.get("amount") == amount_minor and op.state is not OpState.FAILED and op.outcome != ANSWERED:
                return op.idempotency_key
        return refund_key(reference, amount_minor, len(refunds) + 1)

    async def _finish(self, key: str, state: OpState, outcome: str) -> None:
        await self._journal.call(functools.partial(Journal.finish_operation, key=key, state=state, outcome=outcome))

"""Unknown outcomes and what a finished sale owes: status queries inside the sale's deadline,
reversals of every payment but the winner, ``resolve`` entries for the forwarder.

Invariants:
- An unknown outcome is never followed by a second charge: the attempt is looked up (its payment
  by id when it settled the sale's payment, else by its merchant reference); if that cannot tell,
  the sale is rejected and its payments reversed, or a ``resolve`` entry is queued for the
  forwarder (find by reference, reverse).
- The status queries fit in what is left of the sale: each one's timeout is its share of the
  time remaining, so a hung gateway ends the sale with ``outcome_unknown`` (compensated), not by
  the sale deadline with the queries never made.
- One reversal per payment, ever: its key is derived from the payment id.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Final

from pos_agent.checkout.state import CHARGING_KINDS, compensations
from pos_agent.errors import DeviceAuthError, GatewayError, GatewayRejected, GatewayUnreachable, OutcomeUnknown
from pos_agent.gateway_client import GatewayClient, Payment
from pos_agent.journal import AsyncJournal, Journal, OpKind, OpState

__all__ = ["CALL_SHARE", "compensate_sale", "find_outcome", "reverse_payment"]

log = logging.getLogger(__name__)

CALL_SHARE: Final = 0.5
"""Of the time left in a sale, what one charging call may take: the rest is for its status queries."""
UNPAID: Final = "requires_payment_method"


async def find_outcome(
    client: GatewayClient,
    *,
    payment_id: str | None,
    reference: str,
    query_count_max: int,
    interval_s: float,
    remaining_s: Callable[[], float],
) -> Payment | None:
    """What became of an attempt whose answer never came: its payment once it shows the attempt's
    effect, or None if ``query_count_max`` queries (each given its share of ``remaining_s()``) could
    not tell. An attempt on the sale's payment is asked by id (an unpaid payment: not yet, or
    never); one that would have created its payment, by its reference."""
    for query_index in range(query_count_max):
        if query_index:
            await asyncio.sleep(interval_s)
        left = query_count_max - query_index
        budget_s = (remaining_s() - (left - 1) * interval_s) / left
        if budget_s <= 0:
            log.info("no time left for status query %d of %s", query_index + 1, reference)
            break
        try:
            if payment_id is not None:
                payment = await client.get_payment(payment_id, timeout_s=budget_s)
                found = [payment] if payment.status != UNPAID else []
            else:
                found = await client.find_payments(reference, timeout_s=budget_s)
        except GatewayError as exc:
            log.info("status query %d of %s failed: %s", query_index + 1, reference, exc)
            continue
        if found:
            return found[0]
    return None


async def compensate_sale(
    client: GatewayClient,
    journal: AsyncJournal,
    sale_reference: str,
    winner_payment_id: str | None,
    *,
    void_offline: bool,
) -> None:
    """Reverse (or queue) every payment of the sale but the winner; void its offline taps if it
    was not approved. Idempotent: keys are derived from the payment or reference."""
    if void_offline:
        await journal.call(functools.partial(Journal.void_offline_taps_of_sale, sale_reference=sale_reference))
    operations = await journal.call(functools.partial(Journal.operations_of_sale, sale_reference=sale_reference))
    for owed in compensations(operations, winner_payment_id):
        if owed.action == "resolve":
            await journal.call(functools.partial(_queue_resolve, sale_reference=sale_reference, reference=owed.target))
            continue
        await reverse_payment(client, journal, sale_reference, owed.target)


def _queue_resolve(journal: Journal, *, sale_reference: str, reference: str) -> None:
    journal.record_operation(f"resolve-{reference}", OpKind.RESOLVE, sale_reference=sale_reference,
                             reference=reference, body={"reference": reference})
    for op in journal.operations_of_sale(sale_reference):
        if op.reference == reference and op.state is OpState.PENDING and op.kind in CHARGING_KINDS:
            journal.finish_operation(op.idempotency_key, OpState.FAILED, outcome="unknown_resolving")


async def reverse_payment(client: GatewayClient, journal: AsyncJournal, sale_reference: str, payment_id: str) -> bool:
    """Reverse one payment under a key derived from it (one reversal per payment, ever).

    True when the gateway confirmed; False when it stays queued for the forwarder.
    """
    key = f"reverse-{payment_id}"
    await journal.call(functools.partial(
        Journal.record_operation, key=key, kind=OpKind.REVERSE, sale_reference=sale_reference,
        reference=sale_reference, body={"payment": payment_id}, payment_id=payment_id))
    existing = await journal.call(functools.partial(Journal.operation, key=key))
    if existing is not None and existing.state is not OpState.PENDING:
        return True
    try:
        payment = await client.reverse(payment_id, idempotency_key=key)
    except (GatewayUnreachable, OutcomeUnknown, DeviceAuthError) as exc:
        log.warning("reversal of %s queued: %s", payment_id, exc)
        return False
    except GatewayRejected as exc:
        # A definite refusal: the payment cannot be reversed (already closed, or not ours).
        log.warning("reversal of %s refused: %s", payment_id, exc)
        await journal.call(functools.partial(Journal.finish_operation, key=key, state=OpState.FAILED,
                                             outcome=exc.error_code))
        return True
    await journal.call(functools.partial(Journal.finish_operation, key=key, state=OpState.DONE,
                                         outcome=payment.status))
    log.info("reversed %s: now %s (refunded %d)", payment_id, payment.status, payment.amount_refunded)
    return True

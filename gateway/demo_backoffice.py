"""The demo's end of day: the merchant's business day closes, a settlement run pays it out, and the
bank's statement (simulated by ``gateway.banksim``, in real camt.053) is reconciled against the ledger.

The demo merchant's day is made to end a minute from now (its cutoff, in UTC), so that the day's
payments settle at once; the demo waits for that minute (at most ~60 s).
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from gateway.banksim import Inject, Movement, book, camt053

Call = Callable[..., Awaitable[tuple[int, Any, dict[str, str]]]]


async def end_of_day(call: Call, ops: str, secret_key: str, merchant_id: str, bank_movements: list[Movement],
                     money: Callable[[int], str]) -> None:
    await call("POST", f"/v1/operator/merchants/{merchant_id}/payout_account", ops,
               {"holder_name": "Lanzhou Noodle House Ltd", "bank_name": "ICBC", "account_number": "6222020200445566"},
               key=str(uuid.uuid4()), expect=201)
    now = datetime.now(UTC)
    cutoff = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    business_date = now.date()
    await call("POST", f"/v1/operator/merchants/{merchant_id}/settlement", ops,
               {"timezone": "UTC", "settlement_cutoff": cutoff.strftime("%H:%M")}, key=str(uuid.uuid4()), expect=200)
    wait_s = (cutoff - datetime.now(UTC)).total_seconds() + 1
    print(f"   payout account set; the merchant's day ends at {cutoff:%H:%M} UTC: waiting {wait_s:.0f} s")
    await asyncio.sleep(max(wait_s, 0))

    _, run, _ = await call("POST", "/v1/operator/settlement_runs", ops, {"date": business_date.isoformat()},
                           key=f"settle-{business_date}", expect=200)
    for t in run["totals"]:
        print(f"   settlement run {run['id']} for {run['business_date']}: {t['batch_count']} batch(es) {t['currency']},"
              f" captured {money(t['captured'])}, refunded {money(t['refunded'])}, fees {money(t['fee'])},"
              f" payout {money(t['payout'])}")
    _, payouts, _ = await call("GET", "/v1/payouts", secret_key, expect=200)
    # One payout per currency (the day had a EUR payment too); the bank account and its statement are in CNY.
    payout = next(p for p in payouts["data"] if p["currency"] == "CNY")
    await call("POST", f"/v1/operator/payouts/{payout['id']}/mark_paid", ops, {}, key=str(uuid.uuid4()), expect=200)
    print(f"   payout {payout['reference']} of {money(payout['amount'])} {payout['currency']} sent to the bank"
          f" (pain.001), marked paid")

    # The bank books every top-up and withdrawal the same day, the payout on its execution date, and a
    # deposit nobody announced.
    executed = date.fromisoformat(payout["execution_date"])
    movements = [*bank_movements, Movement(payout["reference"], "DBIT", payout["amount"], executed)]
    statement = camt053(book(movements, Inject(unknown_deposits=1, delay_business_days=0)),
                        statement_id=f"DEMO-{business_date:%Y%m%d}", opening_minor=1_000_000)
    _, summary, _ = await call("POST", "/v1/operator/bank_statements", ops,
                               {"format": "camt053", "content_base64": base64.b64encode(statement).decode()},
                               key=f"statement-{business_date}", expect=201)
    matched = ", ".join(f"{count} by {rule}" for rule, count in sorted(summary["matched"].items()))
    exceptions = ", ".join(f"{count} {kind}" for kind, count in sorted(summary["exceptions"].items())) or "none"
    print(f"   bank statement (camt.053, {summary['entries']} entries) reconciled: matched {matched};"
          f" exceptions: {exceptions}")
    _, payouts, _ = await call("GET", "/v1/payouts", secret_key, expect=200)
    seen = next(p for p in payouts["data"] if p["id"] == payout["id"])
    print(f"   payout now {seen['status']}; open exceptions: GET /v1/operator/reconciliation/exceptions")

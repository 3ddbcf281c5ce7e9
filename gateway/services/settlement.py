"""Settlement use cases: run a business day's close, pay payouts, read batches, render the run's files,
and the operator's settings (time zone, cutoff, fixed fee, payout account).

A run of (date, merchant or all) is ONE transaction: it closes, set-based, the batch of every merchant
and currency whose day has ended (batches, the entries they settle, the ledger movements, payouts and
``settlement_batch.closed`` events together). Asking again for the same (date, merchant) resumes the same
run: days that had not ended yet are closed, closed ones stay as they are (closing twice changes nothing).

Race with captures: a capture's journal entry is stamped with its transaction's start. Before the close
reads, it waits until no transaction begun before the cutoff is still open (``wait_for_older_transactions``),
so every entry stamped before the cutoff is visible to it and every later one is stamped after the
cutoff: each lands in exactly one batch, its own day's. Entries are assigned by setting their
``batch_id`` once, under the merchant's settlement lock, so even a close that did not wait (or a clock
that jumped) could only move an entry to the next batch, never into two.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from datetime import date, datetime
from typing import Any, Protocol

import asyncpg
import msgspec

from gateway.auth.principals import Principal, PrincipalKind
from gateway.auth.sealing import Sealer
from gateway.domain import bank_accounts, ledger
from gateway.domain import settlement as domain
from gateway.domain.ids import Kind, decode, encode
from gateway.errors import InvalidRequest, InvalidState, NotFound, Unavailable
from gateway.render import settlement_files as files
from gateway.services import audit, pages, views
from gateway.services.context import Services
from gateway.services.idempotency import Reply, RequestIdentity
from gateway.services.pages import PageRequest
from gateway.store import ledger as ledger_store
from gateway.store import settlement as store
from gateway.store import tenants
from gateway.store.db import Connection

_SEAL_PURPOSE = b"wallet-gateway payout accounts v1"
_sealers: dict[str, Sealer] = {}
Progress = Callable[[str, int, int], None]  # (phase, done, total)


def _sealer(svc: Services) -> Sealer:
    pepper = svc.settings.auth.api_key_pepper
    if pepper not in _sealers:
        _sealers[pepper] = Sealer(pepper, purpose=_SEAL_PURPOSE)
    return _sealers[pepper]


def _id(kind: Kind, text: str, what: str, param: str = "id") -> uuid.UUID:
    value = decode(kind, text)
    if value is None:
        raise NotFound(f"no such {what}: {text}", param=param)
    return value


def business_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest("date is written YYYY-MM-DD", code="invalid_date", param="date") from None


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a run will close: the windows of the merchants whose day has ended, and the accounts."""

    windows: list[tuple[uuid.UUID, str, str, domain.Window, Any]]  # (merchant, currency, timezone, window, cutoff)
    not_ended: list[uuid.UUID]
    accounts: dict[ledger.AccountRef, ledger_store.Account]

    @property
    def latest_end(self) -> datetime | None:
        return max((w.end for _, _, _, w, _ in self.windows), default=None)


async def _plan(svc: Services, day: date, merchant_id: uuid.UUID | None) -> _Plan:
    async with svc.db.connection() as conn:
        if merchant_id is not None and await tenants.merchant(conn, merchant_id) is None:
            raise NotFound(f"no such merchant: {encode(Kind.MERCHANT, merchant_id)}", param="merchant")
        targets = await store.merchants_to_settle(conn, merchant_id)
        now = await store.database_now(conn)
        windows, not_ended, refs = [], [], []
        for row in targets:
            w = domain.window(day, domain.zone(row["timezone"]), row["settlement_cutoff"])
            if w.end > now:
                not_ended.append(row["id"])
                continue
            for code in row["currencies"]:
                windows.append((row["id"], code, row["timezone"], w, row["settlement_cutoff"]))
                refs += [ledger.merchant(row["id"], code), ledger.payable(row["id"], code), ledger.fees(code),
                         ledger.revenue(code)]
        accounts = await ledger_store.resolve_accounts(conn, refs) if refs else {}
    return _Plan(windows, not_ended, accounts)


async def _drain(svc: Services, conn: Connection, plan: _Plan) -> None:
    end = plan.latest_end
    if end is not None and not await store.wait_for_older_transactions(conn, end,
                                                                       svc.settings.settlement.drain_timeout_s):
        raise Unavailable("transactions begun before the cutoff are still running; retry the run",
                          code="settlement_busy", retry_after_s=5)


async def _close(svc: Services, conn: Connection, day: date, merchant_id: uuid.UUID | None,
                 plan: _Plan, who: Principal | None) -> views.SettlementRunView:
    long_s = svc.settings.settlement.statement_timeout_s
    await store.allow_long_statements(conn, long_s)
    run = await store.claim_run(conn, uuid.uuid4(), day, merchant_id)
    closed: list[asyncpg.Record] = []
    if plan.windows:
        ws = plan.windows
        closed = await store.close_batches(
            conn, run["id"], [x[0] for x in ws], [x[1] for x in ws], [day] * len(ws), [x[3].start for x in ws],
            [x[3].end for x in ws], [x[2] for x in ws], [x[4] for x in ws], long_s,
        )
    entries: list[tuple[uuid.UUID, ledger.Entry]] = []
    for row in closed:
        figures = domain.totals(row["captured_minor"], row["refunded_minor"], row["fee_minor"], row["carry_in_minor"],
                                cashback_minor=row["cashback_minor"])
        assert (figures.net_minor, figures.payout_minor, figures.carry_out_minor) == (
            row["net_minor"], row["payout_minor"], row["carry_out_minor"])
        entry = ledger.settlement_close(row["merchant_id"], row["currency"], row["payout_minor"], row["fee_minor"])
        if entry is not None:
            entries.append((row["id"], entry))
    await ledger_store.post_batches(conn, entries, plan.accounts)
    paid = [row for row in closed if row["payout_minor"] > 0]
    if paid:
        accounts = await store.current_bank_accounts(conn, sorted({row["merchant_id"] for row in paid}))
        await store.insert_payouts(
            conn, [uuid.uuid4() for _ in paid], [r["id"] for r in paid], [r["merchant_id"] for r in paid],
            [r["payout_minor"] for r in paid], [r["currency"] for r in paid],
            [domain.payout_reference(r["id"]) for r in paid], [domain.execution_date(day) for _ in paid],
            [accounts.get(r["merchant_id"]) for r in paid],
        )
    if closed:
        await store.insert_events(
            conn, "settlement_batch.closed", [r["id"] for r in closed], [r["merchant_id"] for r in closed],
            [msgspec.json.encode(views.settlement_batch_view(r)).decode() for r in closed],
        )
    view = await _run_view(conn, run, len(closed), plan.not_ended)
    await audit.record(conn, who, "settlement_run.completed", run["id"], view, merchant_id=merchant_id)
    return view


async def _run_view(conn: Connection, run: asyncpg.Record, closed_now: int,
                    not_ended: list[uuid.UUID]) -> views.SettlementRunView:
    batches = await store.run_batches(conn, run["id"])
    payouts = await store.run_payouts(conn, run["id"])
    sums: dict[str, list[int]] = defaultdict(lambda: [0] * 8)
    for b in batches:
        s = sums[b["currency"]]
        for i, value in enumerate((1, b["captured_minor"], b["refunded_minor"], b["fee_minor"], b["net_minor"],
                                   b["payout_minor"], b["carry_out_minor"], b["cashback_minor"])):
            s[i] += value
    return views.SettlementRunView(
        id=encode(Kind.SETTLEMENT_RUN, run["id"]), business_date=run["business_date"].isoformat(),
        merchant=None if run["merchant_id"] is None else encode(Kind.MERCHANT, run["merchant_id"]),
        created_at=run["created_at"].isoformat(), batches_closed_now=closed_now, batch_count=len(batches),
        payout_count=len(payouts), payouts_without_account=sum(1 for p in payouts if p["account_id"] is None),
        merchants_not_ended=[encode(Kind.MERCHANT, m) for m in not_ended],
        totals=[views.SettlementTotal(currency=code, batch_count=s[0], captured=s[1], refunded=s[2], fee=s[3],
                                      cashback=s[7], net=s[4], payout=s[5], carried=s[6])
                for code, s in sorted(sums.items())],
    )


async def settle(svc: Services, day: date, merchant_id: uuid.UUID | None = None) -> views.SettlementRunView:
    """The command line's run (no idempotency key: the run itself is idempotent by (date, merchant))."""
    plan = await _plan(svc, day, merchant_id)
    async with svc.db.connection() as conn:
        await _drain(svc, conn, plan)

        async def work(c: Connection) -> views.SettlementRunView:
            return await _close(svc, c, day, merchant_id, plan, None)

        return await svc.db.run(work, conn)


async def start_run(svc: Services, day_text: str, merchant_text: str | None, identity: RequestIdentity) -> Reply:
    """The operator API's run: idempotent by Idempotency-Key and by (date, merchant)."""
    day = business_date(day_text)
    merchant_id = None if merchant_text is None else _id(Kind.MERCHANT, merchant_text, "merchant", "merchant")
    plan = await _plan(svc, day, merchant_id)

    async def before(conn: Connection) -> None:
        await _drain(svc, conn, plan)

    async def work(conn: Connection) -> tuple[int, Any]:
        return 200, await _close(svc, conn, day, merchant_id, plan, identity.actor)

    return await svc.idempotency.run(identity, work, before=before)


async def mark_paid(svc: Services, payout_text: str, identity: RequestIdentity) -> Reply:
    """pending -> paid: merchant payable -> clearing; a payout already paid answers as it is."""
    payout_id = _id(Kind.PAYOUT, payout_text, "payout")
    async with svc.db.connection() as conn:
        head = await store.payout(conn, payout_id)
        if head is None:
            raise NotFound(f"no such payout: {payout_text}", param="id")
        entry = ledger.payout_paid(head["merchant_id"], head["currency"], head["amount_minor"])
        accounts = await ledger_store.resolve_accounts(conn, [p.account for p in entry.postings])

    async def work(conn: Connection) -> tuple[int, Any]:
        row = await store.payout(conn, payout_id, for_update=True)
        assert row is not None
        if row["status"] in ("paid", "reconciled"):
            return 200, views.payout_view(row)
        if row["status"] != "pending":
            raise InvalidState(f"a {row['status']} payout cannot be marked paid", code="payout_not_pending")
        updated = await store.mark_payout_paid(conn, payout_id)
        await ledger_store.post(conn, entry, accounts, payout_id=payout_id)
        view = views.payout_view(updated)
        await audit.record(conn, identity.actor, "payout.paid", payout_id, view, merchant_id=row["merchant_id"])
        return 200, view

    return await svc.idempotency.run(identity, work)


def _merchant_scope(who: Principal) -> uuid.UUID | None:
    """Merchants see only their own objects; operators see all."""
    if who.kind is PrincipalKind.OPERATOR:
        return None
    assert who.merchant_id is not None
    return who.merchant_id


async def get_batch(svc: Services, who: Principal, text: str) -> views.SettlementBatchView:
    batch_id = _id(Kind.SETTLEMENT_BATCH, text, "settlement batch")
    async with svc.db.connection() as conn:
        row = await store.batch(conn, batch_id, _merchant_scope(who))
    if row is None:
        raise NotFound(f"no such settlement batch: {text}", param="id")
    return views.settlement_batch_view(row)


async def list_batches(svc: Services, who: Principal, page: PageRequest) -> views.SettlementBatchList:
    assert who.merchant_id is not None
    async with svc.stale() as conn:
        rows, has_more = await pages.read(conn, store.merchant_batches(who.merchant_id), page,
                                          partial(decode, Kind.SETTLEMENT_BATCH))
    return views.SettlementBatchList(data=[views.settlement_batch_view(r) for r in rows], has_more=has_more)


async def list_payouts(svc: Services, who: Principal, page: PageRequest) -> views.PayoutList:
    assert who.merchant_id is not None
    async with svc.stale() as conn:
        rows, has_more = await pages.read(conn, store.merchant_payouts(who.merchant_id), page,
                                          partial(decode, Kind.PAYOUT))
    return views.PayoutList(data=[views.payout_view(r) for r in rows], has_more=has_more)


def _summary(row: asyncpg.Record) -> files.BatchSummary:
    view = views.settlement_batch_view(row)
    return files.BatchSummary(
        batch=view.id, merchant=view.merchant, currency=view.currency, business_date=view.business_date,
        window_start=view.window_start, window_end=view.window_end, status=view.status,
        capture_count=view.capture_count, refund_count=view.refund_count, captured=view.captured,
        refunded=view.refunded, fee=view.fee, cashback=view.cashback, carry_in=view.carry_in, net=view.net,
        payout=view.payout,
        carry_out=view.carry_out,
        payout_reference=domain.payout_reference(row["id"]) if row["payout_minor"] > 0 else None,
    )


def _line(batch: asyncpg.Record, row: asyncpg.Record) -> files.DetailLine:
    sign = 1 if row["kind"] == "capture" else -1
    gross, fee, cashback = sign * row["amount_minor"], sign * row["fee_minor"], sign * row["cashback_minor"]
    return files.DetailLine(
        batch=encode(Kind.SETTLEMENT_BATCH, batch["id"]), business_date=batch["business_date"].isoformat(),
        currency=batch["currency"], type=row["kind"], payment=encode(Kind.PAYMENT, row["payment_id"]),
        refund=None if row["refund_id"] is None else encode(Kind.REFUND, row["refund_id"]),
        merchant_reference=row["merchant_reference"], occurred_at=row["created_at"].isoformat(), gross=gross,
        fee=fee, cashback=cashback, net=gross - fee - cashback,
    )


class Sink(Protocol):
    """Where rendered files go: ``write`` is called with each file's pieces in order."""

    def write(self, name: str, data: bytes) -> None: ...


class _Hashed:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.files: dict[str, files.Hashing] = {}

    def write(self, name: str, data: bytes) -> None:
        self.files.setdefault(name, files.Hashing(name)).update(data)
        self.sink.write(name, data)


async def _detail(conn: Connection, out: _Hashed, prefix: str, merchant: str, day: date,
                  batches: list[asyncpg.Record]) -> None:
    """The merchant's detail reports, streamed from the database chunk by chunk."""
    csv_name, json_name = f"{prefix}detail.csv", f"{prefix}detail.json"
    doc = files.DetailJson(merchant, day)
    out.write(csv_name, files.detail_csv_header())
    out.write(json_name, doc.header())
    for batch in batches:
        chunk: list[files.DetailLine] = []
        async for row in store.batch_lines(conn, batch["id"]):
            chunk.append(_line(batch, row))
            if len(chunk) >= 2000:
                out.write(csv_name, files.detail_csv_lines(chunk))
                out.write(json_name, doc.lines(chunk))
                chunk = []
        out.write(csv_name, files.detail_csv_lines(chunk))
        out.write(json_name, doc.lines(chunk))
    out.write(json_name, doc.footer())


async def write_run_files(svc: Services, run_text: str, sink: Sink,
                          progress: Progress | None = None) -> list[files.FileDigest]:
    """Render every file of the run into ``sink`` (then ``manifest.json``, the SHA-256 of each);
    returns the manifest's entries. Deterministic: same run, same bytes."""
    run_id = _id(Kind.SETTLEMENT_RUN, run_text, "settlement run")
    out = _Hashed(sink)
    async with svc.db.connection() as conn:
        run = await store.run(conn, run_id)
        if run is None:
            raise NotFound(f"no such settlement run: {run_text}", param="id")
        day: date = run["business_date"]
        batches = await store.run_batches(conn, run_id)
        by_merchant: dict[uuid.UUID, list[asyncpg.Record]] = defaultdict(list)
        for b in batches:
            by_merchant[b["merchant_id"]].append(b)
        for n, (merchant_id, own) in enumerate(sorted(by_merchant.items()), 1):
            merchant = encode(Kind.MERCHANT, merchant_id)
            prefix = f"merchants/{merchant}/"
            summaries = [_summary(b) for b in own]
            out.write(f"{prefix}summary.csv", files.summary_csv(summaries))
            out.write(f"{prefix}summary.json", files.summary_json(merchant, day, summaries))
            await _detail(conn, out, prefix, merchant, day, own)
            if progress is not None:
                progress("files", n, len(by_merchant))
        instructions = [_instruction(svc, row) for row in await store.run_payouts(conn, run_id)
                        if row["account_id"] is not None]
    out.write("payouts.csv", files.payouts_csv(instructions))
    st = svc.settings.settlement
    debtor = files.Debtor(st.debtor_name, st.debtor_account, st.debtor_bic)
    message_id = "SR" + run_id.hex[:24]  # 96 bits of the run id
    out.write("pain001.xml", files.pain001(message_id, run["created_at"], debtor, instructions))
    digests = [h.digest() for h in out.files.values()]
    sink.write("manifest.json", files.manifest(run_text, day, digests))
    return sorted(digests, key=lambda d: d.name)


def _instruction(svc: Services, row: asyncpg.Record) -> files.PayoutInstruction:
    number = _sealer(svc).open(row["number_sealed"], row["account_id"].bytes)
    return files.PayoutInstruction(
        reference=row["reference"], amount_minor=row["amount_minor"], currency=row["currency"],
        execution_date=row["execution_date"], merchant=encode(Kind.MERCHANT, row["merchant_id"]),
        merchant_name=row["merchant_name"], holder_name=row["holder_name"], account_number=number, bic=row["bic"],
        business_date=row["business_date"],
    )


class _Picked:
    """A sink keeping one file's bytes (the others are only hashed, for the manifest)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.parts: list[bytes] = []

    def write(self, name: str, data: bytes) -> None:
        if name == self.name:
            self.parts.append(data)


async def run_file(svc: Services, run_text: str, name: str) -> bytes:
    picked = _Picked(name)
    digests = await write_run_files(svc, run_text, picked)
    if name != "manifest.json" and name not in {d.name for d in digests}:
        raise NotFound(f"no such file in the run: {name}", param="name")
    return b"".join(picked.parts)


async def batch_report(svc: Services, who: Principal, text: str, fmt: str) -> bytes:
    """One batch's detail report (CSV, or JSON with the batch's summary), for its merchant."""
    batch_id = _id(Kind.SETTLEMENT_BATCH, text, "settlement batch")
    collected: list[bytes] = []

    class _Collect:
        def write(self, name: str, data: bytes) -> None:
            if name.endswith(fmt):
                collected.append(data)

    async with svc.db.connection() as conn:
        row = await store.batch(conn, batch_id, _merchant_scope(who))
        if row is None:
            raise NotFound(f"no such settlement batch: {text}", param="id")
        merchant = encode(Kind.MERCHANT, row["merchant_id"])
        await _detail(conn, _Hashed(_Collect()), "", merchant, row["business_date"], [row])
    return b"".join(collected)


async def set_merchant_settlement(svc: Services, merchant_text: str, timezone: str | None, cutoff: str | None,
                                  fee_fixed: int | None, *, who: Principal | None = None
                                  ) -> views.MerchantSettlementView:
    """``who`` is the operator (None: the command line)."""
    merchant_id = _id(Kind.MERCHANT, merchant_text, "merchant")
    try:
        zone_name = None if timezone is None else domain.zone(timezone).key
        cut = None if cutoff is None else domain.cutoff(cutoff)
    except domain.SettlementError as exc:
        raise InvalidRequest(str(exc), code="invalid_settlement_setting",
                             param="timezone" if "timezone" in str(exc) else "settlement_cutoff") from None
    if fee_fixed is not None and not 0 <= fee_fixed <= 100_000_000:
        raise InvalidRequest("fee_fixed is between 0 and 100000000 minor units", code="invalid_fee", param="fee_fixed")
    async with svc.db.connection() as conn, conn.transaction():
        row = await store.set_merchant_settlement(conn, merchant_id, zone_name, cut, fee_fixed)
        if row is not None:
            await audit.record(conn, who, "merchant.settlement_updated", merchant_id,
                               views.merchant_settlement_view(row), merchant_id=merchant_id)
    if row is None:
        raise NotFound(f"no such merchant: {merchant_text}", param="id")
    return views.merchant_settlement_view(row)


async def set_payout_account(svc: Services, merchant_text: str, holder_name: str, bank_name: str, number: str,
                             bic: str | None, *, who: Principal | None = None) -> views.PayoutAccountView:
    """The merchant's payout account: sealed in full (the payout file needs it), masked and hashed; its
    audit event carries the masked view only. ``who`` is the operator (None: the command line)."""
    merchant_id = _id(Kind.MERCHANT, merchant_text, "merchant")
    normalised = bank_accounts.normalised(number)
    if normalised is None:
        raise InvalidRequest("account_number must be 8-34 letters or digits", code="invalid_account_number",
                             param="account_number")
    if bic is not None and not (len(bic) in (8, 11) and bic.isalnum() and bic.upper() == bic):
        raise InvalidRequest("bic is 8 or 11 upper-case letters or digits", code="invalid_bic", param="bic")
    account_id = uuid.uuid4()
    sealed = _sealer(svc).seal(normalised, account_id.bytes)
    digest = bank_accounts.number_hash(svc.settings.auth.api_key_pepper, normalised)

    async def work(conn: Connection) -> asyncpg.Record:
        if await tenants.merchant(conn, merchant_id) is None:
            raise NotFound(f"no such merchant: {merchant_text}", param="id")
        row = await store.replace_bank_account(conn, account_id, merchant_id, holder_name, bank_name, bic,
                                               bank_accounts.masked(normalised), digest, sealed)
        await audit.record(conn, who, "merchant.payout_account_set", account_id, views.payout_account_view(row),
                           merchant_id=merchant_id)
        return row

    return views.payout_account_view(await svc.db.run(work))


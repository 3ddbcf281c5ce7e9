"""Double-entry journal entries, built purely.

Invariants (checked here before anything reaches the store, and again by the SQL invariant
checker after the fact):
- an entry has at least two postings, each non-zero, each with an integer amount;
- per currency, the postings of an entry sum to exactly zero: money is moved, never made or lost;
- a posting's sign is from the account's point of view: positive raises the account's balance.

Accounts are named by role; the store resolves a role to an account row.
"""

from __future__ import annotations

from collections import defaultdict
import uuid
from dataclasses import dataclass
from enum import StrEnum


class AccountKind(StrEnum):
    WALLET = "wallet"  # what the gateway owes a wallet holder; never negative
    MERCHANT = "merchant_receivable"  # what the gateway owes a merchant
    FEES = "fees"  # fees taken on captures not yet settled: a refund gives part back, so not yet earned
    CLEARING = "clearing"  # the outside world: banks money arrives from and leaves to
    WRITE_OFF = "write_off"  # bank money the ledger cannot explain, written off by an operator
    PAYABLE = "merchant_payable"  # settled, owed to the merchant's bank account until the payout is paid
    REVENUE = "revenue"  # the gateway's earned fee income: fees of closed settlement batches
    PROMOTIONS = "promotions"  # the bank's promotion budget: pays bank-funded discounts, takes clawbacks back
    FX_POSITION = "fx_position"  # the gateway's position in a currency: what conversions bought (+) and sold (-)
    FX_FEES = "fx_fees"  # conversion fees, earned at once (a conversion is never given back)


NO_OVERDRAFT = frozenset({AccountKind.WALLET})


class EntryKind(StrEnum):
    TOP_UP = "top_up"
    WITHDRAWAL = "withdrawal"
    CAPTURE = "capture"
    REFUND = "refund"
    WRITE_OFF = "write_off"
    SETTLEMENT = "settlement"  # a batch closes: receivable -> payable, fees -> revenue
    PAYOUT = "payout"  # a payout is paid: payable -> clearing
    CASHBACK = "cashback"  # promotions -> wallet, with a payment's capture (a refund takes it back in its entry);
    # a merchant-funded cashback is no entry of its own: two legs of the capture's (``with_merchant_cashback``)
    GIFT = "gift"  # promotions -> wallet: a registration or first-payment gift, never taken back
    CONVERSION = "conversion"  # a holder's currencies: wallet(A) -> fx_position(A); fx_position(B) -> wallet(B), fx_fees(B)
    CONVERSION_RETURN = "conversion_return"  # a payment's conversion given back (a refund) at its own rate


@dataclass(frozen=True, slots=True)
class AccountRef:
    kind: AccountKind
    owner: uuid.UUID | None  # wallet holder / merchant; None for the gateway's own accounts
    currency: str


@dataclass(frozen=True, slots=True)
class Posting:
    account: AccountRef
    amount_minor: int


class UnbalancedEntry(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Entry:
    kind: EntryKind
    postings: tuple[Posting, ...]

    def __post_init__(self) -> None:
        if len(self.postings) < 2:
            raise UnbalancedEntry("an entry needs at least two postings")
        totals: dict[str, int] = defaultdict(int)
        for posting in self.postings:
            if isinstance(posting.amount_minor, bool) or not isinstance(posting.amount_minor, int):
                raise UnbalancedEntry("posting amounts are integers")
            if posting.amount_minor == 0:
                raise UnbalancedEntry("zero postings carry no information")
            totals[posting.account.currency] += posting.amount_minor
        if any(total != 0 for total in totals.values()):
            raise UnbalancedEntry(f"postings do not balance: {dict(totals)}")


def _entry(kind: EntryKind, *legs: tuple[AccountRef, int]) -> Entry:
    return Entry(kind, tuple(Posting(account, amount) for account, amount in legs if amount != 0))


def clearing(currency: str) -> AccountRef:
    return AccountRef(AccountKind.CLEARING, None, currency)


def fees(currency: str) -> AccountRef:
    return AccountRef(AccountKind.FEES, None, currency)


def wallet(holder: uuid.UUID, currency: str) -> AccountRef:
    return AccountRef(AccountKind.WALLET, holder, currency)


def merchant(merchant_id: uuid.UUID, currency: str) -> AccountRef:
    return AccountRef(AccountKind.MERCHANT, merchant_id, currency)


def payable(merchant_id: uuid.UUID, currency: str) -> AccountRef:
    return AccountRef(AccountKind.PAYABLE, merchant_id, currency)


def revenue(currency: str) -> AccountRef:
    return AccountRef(AccountKind.REVENUE, None, currency)


def promotions(currency: str) -> AccountRef:
    return AccountRef(AccountKind.PROMOTIONS, None, currency)


def fx_position(currency: str) -> AccountRef:
    return AccountRef(AccountKind.FX_POSITION, None, currency)


def fx_fees(currency: str) -> AccountRef:
    return AccountRef(AccountKind.FX_FEES, None, currency)


def _check_positive(amount_minor: int) -> None:
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
        raise UnbalancedEntry("amounts moved are positive integers")


def top_up(holder: uuid.UUID, currency: str, amount_minor: int) -> Entry:
    _check_positive(amount_minor)
    return _entry(EntryKind.TOP_UP, (clearing(currency), -amount_minor), (wallet(holder, currency), amount_minor))


def withdrawal(holder: uuid.UUID, currency: str, amount_minor: int) -> Entry:
    _check_positive(amount_minor)
    return _entry(EntryKind.WITHDRAWAL, (wallet(holder, currency), -amount_minor), (clearing(currency), amount_minor))


def capture(holder: uuid.UUID, merchant_id: uuid.UUID, currency: str, amount_minor: int, fee_minor: int) -> Entry:
    _check_positive(amount_minor)
    if not 0 <= fee_minor <= amount_minor:
        raise UnbalancedEntry("fee out of range")
    return _entry(
        EntryKind.CAPTURE,
        (wallet(holder, currency), -amount_minor),
        (merchant(merchant_id, currency), amount_minor - fee_minor),
        (fees(currency), fee_minor),
    )


def refund(holder: uuid.UUID, merchant_id: uuid.UUID, currency: str, amount_minor: int, fee_back_minor: int,
           merchant_clawback_minor: int = 0) -> Entry:
    """A refund: the merchant gives back ``amount - fee_back``, the fees the part of the fee given back.
    ``merchant_clawback_minor``: the part of a merchant-funded cashback it takes back, returned to the
    merchant (its own leg) and netted from what the holder receives, never debited from the wallet (a
    holder who spent its cashback is not overdrawn)."""
    _check_positive(amount_minor)
    if not 0 <= fee_back_minor <= amount_minor:
        raise UnbalancedEntry("fee refund out of range")
    if not 0 <= merchant_clawback_minor <= amount_minor:
        raise UnbalancedEntry("clawback out of range")
    return _entry(
        EntryKind.REFUND,
        (merchant(merchant_id, currency), -(amount_minor - fee_back_minor)),
        (fees(currency), -fee_back_minor),
        (wallet(holder, currency), amount_minor - merchant_clawback_minor),
        (merchant(merchant_id, currency), merchant_clawback_minor),
    )


def with_merchant_cashback(entry: Entry, holder: uuid.UUID, merchant_id: uuid.UUID, currency: str,
                           cashback_minor: int) -> Entry:
    """A capture's entry with the cashback its merchant funds paid in it: the merchant's receivable pays
    ``cashback_minor`` to the payer's wallet, two legs of the capture's own entry (beside the capture's
    credit of the merchant and debit of the wallet, which they never reduce: the ledger shows who paid,
    and the cashback never funds the payment it is paid on). At most what the merchant receives."""
    _check_positive(cashback_minor)
    received = sum(p.amount_minor for p in entry.postings if p.account == merchant(merchant_id, currency))
    if entry.kind is not EntryKind.CAPTURE or not cashback_minor <= received:
        raise UnbalancedEntry("a merchant's cashback is paid in its capture, out of what the merchant receives")
    return Entry(entry.kind, (*entry.postings, Posting(merchant(merchant_id, currency), -cashback_minor),
                              Posting(wallet(holder, currency), cashback_minor)))


def discounted_capture(holder: uuid.UUID, merchant_id: uuid.UUID, currency: str, amount_minor: int, fee_minor: int,
                       bank_discount_minor: int) -> Entry:
    """A capture of which the promotions account pays ``bank_discount_minor`` (a bank-funded discount):
    the holder pays ``amount - discount``, the merchant receives ``amount - fee`` as for any capture.
    (A merchant-funded discount is a plain ``capture`` of the discounted amount.)"""
    _check_positive(amount_minor)
    if not 0 < bank_discount_minor < amount_minor:
        raise UnbalancedEntry("a discount is positive and below the amount")
    if not 0 <= fee_minor <= amount_minor:
        raise UnbalancedEntry("fee out of range")
    return _entry(
        EntryKind.CAPTURE,
        (wallet(holder, currency), -(amount_minor - bank_discount_minor)),
        (promotions(currency), -bank_discount_minor),
        (merchant(merchant_id, currency), amount_minor - fee_minor),
        (fees(currency), fee_minor),
    )


def discounted_refund(holder: uuid.UUID, merchant_id: uuid.UUID, currency: str, amount_minor: int,
                      fee_back_minor: int, clawback_minor: int) -> Entry:
    """A refund of a payment a bank-funded benefit paid part of (a discount, or a cashback credited
    with its capture): the merchant gives back ``amount - fee_back`` as for any refund, the promotions
    account takes its ``clawback_minor`` back and the holder receives the rest. The clawback is
    netted here, never debited from the wallet: a holder who spent its cashback is not overdrawn."""
    _check_positive(amount_minor)
    if not 0 <= fee_back_minor <= amount_minor:
        raise UnbalancedEntry("fee refund out of range")
    if not 0 <= clawback_minor <= amount_minor:
        raise UnbalancedEntry("clawback out of range")
    return _entry(
        EntryKind.REFUND,
        (merchant(merchant_id, currency), -(amount_minor - fee_back_minor)),
        (fees(currency), -fee_back_minor),
        (promotions(currency), clawback_minor),
        (wallet(holder, currency), amount_minor - clawback_minor),
    )


def _promotion_credit(kind: EntryKind, holder: uuid.UUID, currency: str, amount_minor: int) -> Entry:
    _check_positive(amount_minor)
    return _entry(kind, (promotions(currency), -amount_minor), (wallet(holder, currency), amount_minor))


def cashback(holder: uuid.UUID, currency: str, amount_minor: int) -> Entry:
    """The promotions account credits a captured payment's cashback to its payer's wallet."""
    return _promotion_credit(EntryKind.CASHBACK, holder, currency, amount_minor)


def gift(holder: uuid.UUID, currency: str, amount_minor: int) -> Entry:
    """The promotions account credits a gift (registration, first payment) to the holder's wallet."""
    return _promotion_credit(EntryKind.GIFT, holder, currency, amount_minor)


def write_off(currency: str, amount_minor: int) -> Entry:
    """Write off ``amount_minor`` (signed, from the bank's view: the bank holds that much more than the
    ledger expected; negative when it holds less): clearing takes the bank's side, write-off the rest."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor == 0:
        raise UnbalancedEntry("a write-off moves a non-zero integer amount")
    return _entry(EntryKind.WRITE_OFF, (clearing(currency), -amount_minor),
                  (AccountRef(AccountKind.WRITE_OFF, None, currency), amount_minor))


def settlement_close(merchant_id: uuid.UUID, currency: str, payout_minor: int, fee_minor: int) -> Entry | None:
    """A batch closes: its payout moves from receivable to payable, its fees (negative when the day's refunds
    gave back more fee than its captures took) from unearned fees to revenue. None when nothing moves."""
    if isinstance(payout_minor, bool) or not isinstance(payout_minor, int) or payout_minor < 0:
        raise UnbalancedEntry("a payout is not negative")
    if payout_minor == 0 and fee_minor == 0:
        return None
    return _entry(
        EntryKind.SETTLEMENT,
        (merchant(merchant_id, currency), -payout_minor),
        (payable(merchant_id, currency), payout_minor),
        (fees(currency), -fee_minor),
        (revenue(currency), fee_minor),
    )


def payout_paid(merchant_id: uuid.UUID, currency: str, amount_minor: int) -> Entry:
    _check_positive(amount_minor)
    return _entry(EntryKind.PAYOUT, (payable(merchant_id, currency), -amount_minor), (clearing(currency), amount_minor))


def conversion(holder: uuid.UUID, source: str, target: str, sell_minor: int, receive_minor: int,
               fee_minor: int) -> Entry:
    """A holder sells ``sell_minor`` of ``source`` and receives ``receive_minor`` of ``target`` less nothing
    (the fee, in ``target``, is on top of what is received): each currency balances on its own, through
    the gateway's FX position in it."""
    _check_positive(sell_minor)
    _check_positive(receive_minor)
    if isinstance(fee_minor, bool) or not isinstance(fee_minor, int) or fee_minor < 0:
        raise UnbalancedEntry("a fee is not negative")
    if source == target:
        raise UnbalancedEntry("a conversion is between two currencies")
    return _entry(
        EntryKind.CONVERSION,
        (wallet(holder, source), -sell_minor),
        (fx_position(source), sell_minor),
        (fx_position(target), -(receive_minor + fee_minor)),
        (wallet(holder, target), receive_minor),
        (fx_fees(target), fee_minor),
    )


def conversion_return(holder: uuid.UUID, source: str, target: str, target_minor: int, source_minor: int,
                      fee_back_minor: int) -> Entry:
    """Part of a payment's conversion given back: the holder's ``target_minor`` of ``target`` (and the
    fee's share, from the FX fees) go back to the FX position, which gives ``source_minor`` of ``source``
    back to the holder (gateway/domain/fx_payments.py computes the amounts)."""
    _check_positive(target_minor)
    for amount in (source_minor, fee_back_minor):
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise UnbalancedEntry("an amount given back is not negative")
    if source == target:
        raise UnbalancedEntry("a conversion is between two currencies")
    return _entry(
        EntryKind.CONVERSION_RETURN,
        (wallet(holder, target), -target_minor),
        (fx_fees(target), -fee_back_minor),
        (fx_position(target), target_minor + fee_back_minor),
        (fx_position(source), -source_minor),
        (wallet(holder, source), source_minor),
    )

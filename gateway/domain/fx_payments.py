"""Paying in a currency the wallet lacks, and giving back: the arithmetic of a payment's conversion.

A payment in currency T from a wallet in S is paid through a conversion (gateway/domain/fx.py's
``Quote``): S ``sell_minor`` sold for T ``receive_minor`` (at least the payment's amount; the holder
keeps any excess in its T wallet) plus the fee ``fee_minor`` in T. The payment then takes its
amount from the T wallet as any payment does.

A refund, and a release of a hold (cancel, expiry, capture of less), converts back AT THE ORIGINAL
CONVERSION'S RATE, not today's: the T minor units a refund credits to the wallet, or a release frees in
it, are sold back for the same share of what the holder paid, fee included (``Return.of``). With
``returned`` the T units given back so far by releases and refunds together (this one included):
- source given back so far = ``floor(sell_minor * returned / receive_minor)``;
- fee given back so far   = ``floor(fee_minor * returned / receive_minor)``;
- a return gives back the growth of those totals. Rounding is DOWN on the running totals, in
  minor units of each currency (JPY 0, EUR 2, KWD 3 decimals alike), so partial returns never sum
  to more than one full return, a return of everything received gives back exactly ``sell_minor``
  and ``fee_minor``, and a return's share is never more than its exact share plus what earlier
  returns' rounding held back (at most one source minor unit in all).
Money is never made: what the holder gets back is at most what it paid for the same share.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Return:
    target_minor: int  # T units sold back (what the refund credited the wallet, or the release freed)
    source_minor: int  # S units the holder gets back (may be 0 when one T unit is worth less than one S unit)
    fee_minor: int  # T units of the conversion's fee given back with them

    @classmethod
    def of(cls, sell_minor: int, receive_minor: int, fee_minor: int, returned_before_minor: int,
           target_minor: int) -> Return:
        """The return of ``target_minor`` more T units of a conversion that has returned
        ``returned_before_minor`` already."""
        if sell_minor <= 0 or receive_minor <= 0 or fee_minor < 0:
            raise ValueError("a conversion sells and receives positive amounts")
        if target_minor <= 0 or returned_before_minor < 0:
            raise ValueError("a return gives back a positive amount")
        returned = returned_before_minor + target_minor
        if returned > receive_minor:
            raise ValueError("a conversion cannot give back more than it received")
        return cls(
            target_minor=target_minor,
            source_minor=share(sell_minor, returned, receive_minor) - share(sell_minor, returned_before_minor,
                                                                             receive_minor),
            fee_minor=share(fee_minor, returned, receive_minor) - share(fee_minor, returned_before_minor, receive_minor),
        )


def share(total_minor: int, part_minor: int, whole_minor: int) -> int:
    """``total * part / whole`` rounded down, exactly (integers only)."""
    return total_minor * part_minor // whole_minor

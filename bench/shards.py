"""Replay a day's payment mix over N shards and print the load per shard and the cross-shard share.

A paper model of the gateway on a sharded PostgreSQL (Citus; see docs/scaling.md), pure Python, no
database. It draws one day of money movements, places every wallet and merchant on a shard by each
placement strategy, and counts per shard the local transactions it commits and the rows it writes,
and per strategy the share of movements that touch more than one shard.

The day (defaults; each a flag):
- 2,000 merchants in 40 cities, popularity Zipf(s=1.1) over the whole set (a few chains take most
  payments); 50,000 wallets spread over the cities by a Zipf(s=0.8) city size, activity Zipf(s=0.6);
- 200,000 movements: 80 % payments (a wallet pays a merchant of its own city with probability 0.85,
  else any merchant by popularity; 30 % of them merchant-presented: the merchant creates the payment
  before any payer is known, a QR code at checkout), 4 % refunds (of a payment made earlier that day), 9 % top-ups and
  3 % withdrawals (bank <-> wallet), 4 % conversions (a holder's wallet in one currency to its wallet
  in another);
- then settlement: one run per merchant that was paid that day.

Postings (the ledger's legs) are those of gateway/domain: a payment debits the wallet and credits
the merchant's receivable and the fee account; a refund reverses them; a top-up or withdrawal moves
between the wallet and the bank clearing account; a conversion goes wallet -> FX clearing (currency
A), FX clearing (currency B) -> wallet; settlement moves the receivable to the payout clearing.
Platform accounts (fees, clearing) have one balance shard per database shard, as hot accounts have
several balance shards today (accounts.shard_count), so their legs are always local.

A movement whose rows and legs live on one shard is one local transaction there. One that spans
shards runs as the saga of docs/scaling.md: one local transaction per shard touched, the movement's
own rows on its home shard and a step record on each other; when the legs themselves span shards,
each shard's part is balanced through that shard's inter-shard clearing account (one extra leg).

Strategies (where a wallet's accounts, a merchant's accounts and a movement's own rows live):
- ``merchant``: wallets hashed by holder, merchants by merchant; a payment's rows on the merchant's shard;
- ``wallet``: the same hashing; a payment's rows on the payer's shard;
- ``region``: wallets and merchants hashed by city (co-located), a payment's rows on the merchant's shard;
- ``wallet+spread``: wallets hashed by holder and every merchant's receivable split into one
  sub-account per shard (a payment credits the one on the payer's shard); a payment's rows on the
  payer's shard, except a merchant-presented one's: created before its payer is known, it stays on
  the merchant's shard, and paying it is a status hop there while the money stays on the payer's
  shard; settlement sweeps the merchant's N sub-accounts.

Deterministic for a given ``--seed``; ``--movements`` is capped so a run stays within seconds.

    .venv/bin/python bench/shards.py --shards 8 [--seed 1] [--movements 200000]
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

MOVEMENTS_MAX = 2_000_000
SHARDS_MAX = 1024
# Rows a local transaction writes: per leg a posting and its balance row; the movement's own rows
# (payment or refund or transfer, journal entry, event, idempotency key) on the first shard; a saga
# step's record (the step row and its event) on every other shard.
ROWS_PER_LEG = 2
ROWS_MOVEMENT = 4
ROWS_SAGA_STEP = 2

PAYMENT, REFUND, TOP_UP, WITHDRAWAL, CONVERSION, SETTLEMENT = (
    "payment", "refund", "top_up", "withdrawal", "conversion", "settlement")
STRATEGIES = ("merchant", "wallet", "region", "wallet+spread")


@dataclass(frozen=True, slots=True)
class Movement:
    kind: str
    wallet: int  # -1 when no wallet takes part (settlement)
    merchant: int  # -1 when no merchant takes part (top-up, withdrawal, conversion)
    presented: bool = False  # a payment (or the refund of one) the merchant created before its payer was known


@dataclass(frozen=True, slots=True)
class Placement:
    """Shard of each wallet and merchant, and which side owns a payment's (and refund's) rows."""

    wallet_shard: Sequence[int]
    merchant_shard: Sequence[int]
    rows_on_payer: bool  # a payment's rows on the payer's shard (else on the merchant's)
    receivable_per_shard: bool  # every merchant has a receivable sub-account on every shard
    shard_count: int


@dataclass(slots=True)
class Tally:
    transactions: list[int]  # local transactions committed per shard
    rows: list[int]  # rows written per shard
    movements: int = 0
    cross_shard: int = 0
    by_kind: dict[str, list[int]] = field(default_factory=dict)  # kind -> [movements, cross-shard]

    @property
    def cross_share(self) -> float:
        return self.cross_shard / self.movements if self.movements else 0.0


def mix64(value: int) -> int:
    """splitmix64's finaliser: a stable hash (Python's hash() of a str changes per process)."""
    value = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 31)


def shard_of(entity: int, salt: int, shard_count: int) -> int:
    # Citus splits the 32-bit hash space into equal ranges, one per shard: the same as a modulo here.
    return mix64(entity * 2654435761 + salt) % shard_count


def zipf_cumulative(count: int, exponent: float) -> list[float]:
    """Cumulative weights of ranks 1..count with weight 1/rank**exponent (for random.choices)."""
    return list(itertools.accumulate(1.0 / rank**exponent for rank in range(1, count + 1)))


def legs(movement: Movement, placement: Placement) -> tuple[int, list[int]]:
    """(shard that writes the movement's own rows, shard of each ledger leg)."""
    w = placement.wallet_shard[movement.wallet] if movement.wallet >= 0 else -1
    m = placement.merchant_shard[movement.merchant] if movement.merchant >= 0 else -1
    if movement.kind in (TOP_UP, WITHDRAWAL):
        return w, [w, w]  # wallet and the shard's bank clearing account
    if movement.kind == CONVERSION:
        return w, [w, w, w, w]  # wallet A, FX clearing A, FX clearing B, wallet B: one holder, one shard
    if movement.kind == SETTLEMENT:
        if placement.receivable_per_shard:
            # One sweep leg pair per shard: its receivable sub-account to its payout clearing.
            every = list(range(placement.shard_count))
            return m, [s for s in every for _ in range(2)]
        return m, [m, m]
    if placement.receivable_per_shard:
        # The receivable (and fee) legs on the payer's shard: a refund goes back to the payer, so it
        # debits the very sub-account its payment credited.
        return (m if movement.presented else w), [w, w, w]
    home = w if placement.rows_on_payer else m
    return home, [w, m, m]  # wallet, receivable, fees (the fee account's shard beside the receivable)


def record(tally: Tally, movement: Movement, placement: Placement) -> None:
    home, shards = legs(movement, placement)
    touched = sorted(set(shards) | {home})
    money_crosses = len(set(shards)) > 1
    counts = tally.by_kind.setdefault(movement.kind, [0, 0])
    tally.movements += 1
    counts[0] += 1
    cross = len(touched) > 1
    if cross:
        tally.cross_shard += 1
        counts[1] += 1
    for shard in touched:
        tally.transactions[shard] += 1
        rows = ROWS_PER_LEG * shards.count(shard)
        rows += ROWS_MOVEMENT if shard == home else ROWS_SAGA_STEP
        if money_crosses and shard in shards:
            rows += ROWS_PER_LEG  # the leg on this shard's inter-shard clearing account
        tally.rows[shard] += rows


def replay(movements: Iterator[Movement] | Sequence[Movement], placement: Placement) -> Tally:
    n = placement.shard_count
    tally = Tally([0] * n, [0] * n)
    for movement in movements:
        record(tally, movement, placement)
    return tally


@dataclass(frozen=True, slots=True)
class Day:
    merchants: int = 2000
    wallets: int = 50_000
    cities: int = 40
    movements: int = 200_000
    merchant_zipf: float = 1.1
    city_zipf: float = 0.8
    wallet_zipf: float = 0.6
    local_share: float = 0.85
    presented_share: float = 0.30
    mix: tuple[tuple[str, float], ...] = (
        (PAYMENT, 0.80), (REFUND, 0.04), (TOP_UP, 0.09), (WITHDRAWAL, 0.03), (CONVERSION, 0.04))


DEFAULT_DAY = Day()


@dataclass(frozen=True, slots=True)
class World:
    merchant_city: list[int]
    wallet_city: list[int]


def draw_world(day: Day, rng: random.Random) -> World:
    city_weights = zipf_cumulative(day.cities, day.city_zipf)
    cities = range(day.cities)
    return World(rng.choices(cities, cum_weights=city_weights, k=day.merchants),
                 rng.choices(cities, cum_weights=city_weights, k=day.wallets))


def draw_day(day: Day, world: World, rng: random.Random) -> list[Movement]:
    """The day's movements in order, settlement runs last."""
    popularity = zipf_cumulative(day.merchants, day.merchant_zipf)
    weight = [popularity[0]] + [b - a for a, b in itertools.pairwise(popularity)]
    by_city: dict[int, tuple[list[int], list[float]]] = {}
    for merchant, city in enumerate(world.merchant_city):
        members, _ = by_city.setdefault(city, ([], []))
        members.append(merchant)
    for members, cumulative in by_city.values():
        cumulative.extend(itertools.accumulate(weight[m] for m in members))
    activity = zipf_cumulative(day.wallets, day.wallet_zipf)
    kinds = [kind for kind, _ in day.mix]
    kind_weights = list(itertools.accumulate(share for _, share in day.mix))
    paid: list[tuple[int, int, bool]] = []
    out: list[Movement] = []
    for _ in range(day.movements):
        kind = rng.choices(kinds, cum_weights=kind_weights)[0]
        wallet = rng.choices(range(day.wallets), cum_weights=activity)[0]
        if kind == REFUND and paid:
            payer, merchant, presented = paid[rng.randrange(len(paid))]
            out.append(Movement(REFUND, payer, merchant, presented))
        elif kind in (PAYMENT, REFUND):  # a refund before any payment is drawn as a payment
            local = by_city.get(world.wallet_city[wallet])
            if local is not None and rng.random() < day.local_share:
                members, cumulative = local
                merchant = members[bisect.bisect_left(cumulative, rng.random() * cumulative[-1])]
            else:
                merchant = rng.choices(range(day.merchants), cum_weights=popularity)[0]
            presented = rng.random() < day.presented_share
            paid.append((wallet, merchant, presented))
            out.append(Movement(PAYMENT, wallet, merchant, presented))
        else:
            out.append(Movement(kind, wallet, -1))
    out.extend(Movement(SETTLEMENT, -1, merchant) for merchant in sorted({m for _, m, _ in paid}))
    return out


def placement(strategy: str, world: World, shard_count: int) -> Placement:
    wallets = range(len(world.wallet_city))
    merchants = range(len(world.merchant_city))
    if strategy == "region":
        city_shard = [shard_of(c, 3, shard_count) for c in range(max(world.merchant_city + world.wallet_city) + 1)]
        return Placement([city_shard[c] for c in world.wallet_city], [city_shard[c] for c in world.merchant_city],
                         rows_on_payer=False, receivable_per_shard=False, shard_count=shard_count)
    return Placement([shard_of(w, 1, shard_count) for w in wallets], [shard_of(m, 2, shard_count) for m in merchants],
                     rows_on_payer=strategy != "merchant", receivable_per_shard=strategy == "wallet+spread",
                     shard_count=shard_count)


def spread(values: Sequence[int]) -> str:
    mean = sum(values) / len(values)
    return f"min {min(values):>9,}  mean {mean:>11,.0f}  max {max(values):>9,}  max/mean {max(values) / mean:5.2f}"


def report(strategy: str, tally: Tally, out: Callable[[str], None]) -> None:
    out(f"\n{strategy}: cross-shard {tally.cross_share:6.2%} of {tally.movements:,} movements")
    for kind, (count, cross) in sorted(tally.by_kind.items()):
        out(f"  {kind:<11} {count:>9,}  cross-shard {cross / count:6.2%}")
    out(f"  transactions/shard  {spread(tally.transactions)}")
    out(f"  rows/shard          {spread(tally.rows)}")
    if len(tally.rows) <= 16:
        out("  rows per shard      " + " ".join(f"{r:,}" for r in tally.rows))


def bounded(kind: type, low: float, high: float) -> Callable[[str], object]:
    def parse(text: str) -> object:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value
    return parse


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=bounded(int, 1, SHARDS_MAX), required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--movements", type=bounded(int, 1, MOVEMENTS_MAX), default=DEFAULT_DAY.movements)
    parser.add_argument("--merchants", type=bounded(int, 1, 1_000_000), default=DEFAULT_DAY.merchants)
    parser.add_argument("--wallets", type=bounded(int, 1, 10_000_000), default=DEFAULT_DAY.wallets)
    parser.add_argument("--cities", type=bounded(int, 1, 10_000), default=DEFAULT_DAY.cities)
    parser.add_argument("--merchant-zipf", type=bounded(float, 0.0, 3.0), default=DEFAULT_DAY.merchant_zipf)
    parser.add_argument("--local-share", type=bounded(float, 0.0, 1.0), default=DEFAULT_DAY.local_share)
    parser.add_argument("--presented-share", type=bounded(float, 0.0, 1.0), default=DEFAULT_DAY.presented_share)
    parser.add_argument("--strategy", choices=STRATEGIES, action="append", help="default: all")
    args = parser.parse_args(argv)
    day = Day(merchants=args.merchants, wallets=args.wallets, cities=args.cities, movements=args.movements,
              merchant_zipf=args.merchant_zipf, local_share=args.local_share,
              presented_share=args.presented_share)
    rng = random.Random(args.seed)
    world = draw_world(day, rng)
    movements = draw_day(day, world, rng)
    print(f"{args.shards} shards, seed {args.seed}: {day.merchants:,} merchants (Zipf {day.merchant_zipf}) in "
          f"{day.cities} cities, {day.wallets:,} wallets, {len(movements):,} movements incl. settlement runs,"
          f" {day.presented_share:.0%} of payments merchant-presented")
    for strategy in args.strategy or STRATEGIES:
        report(strategy, replay(movements, placement(strategy, world, args.shards)), print)


if __name__ == "__main__":
    sys.exit(main())

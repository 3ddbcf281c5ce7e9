"""The arithmetic of bench/shards.py: placement, legs per movement, rows and transactions per shard."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "shards.py"
    spec = importlib.util.spec_from_file_location("bench_shards", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


sim = _load()


def _placement(wallet_shard: list[int], merchant_shard: list[int], shards: int, *, on_payer: bool = False,
               spread: bool = False) -> object:
    return sim.Placement(wallet_shard, merchant_shard, rows_on_payer=on_payer, receivable_per_shard=spread,
                         shard_count=shards)


def test_zipf_weights_are_the_harmonic_partial_sums() -> None:
    assert sim.zipf_cumulative(3, 1.0) == pytest.approx([1.0, 1.5, 1.5 + 1 / 3])
    assert sim.zipf_cumulative(4, 0.0) == [1.0, 2.0, 3.0, 4.0]


def test_shard_of_is_stable_and_in_range() -> None:
    shards = [sim.shard_of(entity, 1, 7) for entity in range(1000)]
    assert shards == [sim.shard_of(entity, 1, 7) for entity in range(1000)]
    assert set(shards) == set(range(7))
    assert max(shards.count(s) for s in range(7)) < 1.3 * 1000 / 7  # roughly even
    assert sim.mix64(0) == 0xE220A8397B1DCDAF  # splitmix64's first output for seed 0


def test_local_payment_is_one_transaction_on_one_shard() -> None:
    tally = sim.replay([sim.Movement(sim.PAYMENT, 0, 0)], _placement([0], [0], 2))
    # wallet, receivable and fee legs (2 rows each) plus the payment's own 4 rows
    assert tally.rows == [3 * 2 + 4, 0]
    assert tally.transactions == [1, 0]
    assert (tally.movements, tally.cross_shard) == (1, 0)


def test_cross_shard_payment_is_a_saga_step_on_each_shard() -> None:
    payment = sim.Movement(sim.PAYMENT, 0, 0)
    on_merchant = sim.replay([payment], _placement([0], [1], 2))
    # payer's shard: wallet leg + step record + clearing leg; merchant's: 2 legs + payment rows + clearing leg
    assert on_merchant.rows == [2 + 2 + 2, 2 * 2 + 4 + 2]
    assert on_merchant.transactions == [1, 1]
    assert on_merchant.cross_share == 1.0
    on_payer = sim.replay([payment], _placement([0], [1], 2, on_payer=True))
    assert on_payer.rows == [2 + 4 + 2, 2 * 2 + 2 + 2]


def test_spread_receivable_keeps_payments_and_refunds_local_and_sweeps_every_shard() -> None:
    place = _placement([2], [0], 3, spread=True)
    day = [sim.Movement(sim.PAYMENT, 0, 0), sim.Movement(sim.REFUND, 0, 0), sim.Movement(sim.SETTLEMENT, -1, 0)]
    tally = sim.replay(day, place)
    assert tally.by_kind == {sim.PAYMENT: [1, 0], sim.REFUND: [1, 0], sim.SETTLEMENT: [1, 1]}
    # settlement: one sweep (2 legs) per shard, its own rows on the merchant's shard 0, a clearing leg on each
    sweep = [2 * 2 + 4 + 2, 2 * 2 + 2 + 2, 2 * 2 + 2 + 2]
    assert tally.rows == [sweep[0], sweep[1], sweep[2] + 2 * (3 * 2 + 4)]
    assert tally.transactions == [1, 1, 3]


def test_a_merchant_presented_payment_is_a_status_hop_when_receivables_are_spread() -> None:
    """Created before its payer is known, it stays on the merchant's shard; the money stays on the payer's."""
    tally = sim.replay([sim.Movement(sim.PAYMENT, 0, 0, presented=True)], _placement([1], [0], 2, spread=True))
    assert tally.cross_shard == 1
    # merchant's shard: the payment's own rows only; payer's: 3 legs and a step record, no clearing leg
    assert tally.rows == [4, 3 * 2 + 2]
    # without the spread receivable the money itself crosses: clearing legs on both shards
    crossing = sim.replay([sim.Movement(sim.PAYMENT, 0, 0, presented=True)], _placement([1], [0], 2))
    assert crossing.rows == [2 * 2 + 4 + 2, 2 + 2 + 2]


def test_wallet_only_movements_never_cross() -> None:
    day = [sim.Movement(kind, 0, -1) for kind in (sim.TOP_UP, sim.WITHDRAWAL, sim.CONVERSION)]
    tally = sim.replay(day, _placement([1], [], 2))
    assert tally.cross_shard == 0
    assert tally.rows == [0, (2 * 2 + 4) * 2 + 4 * 2 + 4]


def test_a_day_is_deterministic_and_strategies_order_as_expected() -> None:
    day = sim.Day(merchants=200, wallets=2000, cities=10, movements=5000)

    def run(seed: int, strategy: str, shards: int) -> object:
        rng = random.Random(seed)
        world = sim.draw_world(day, rng)
        return sim.replay(sim.draw_day(day, world, rng), sim.placement(strategy, world, shards))

    assert run(7, "merchant", 4) == run(7, "merchant", 4)
    assert run(7, "merchant", 4) != run(8, "merchant", 4)
    assert run(7, "merchant", 1).cross_shard == 0
    spread, by_merchant = run(7, "wallet+spread", 4), run(7, "merchant", 4)
    # Only merchant-presented payments (30 %) can cross, and then only when payer and merchant differ.
    assert 0.30 * 0.65 < spread.by_kind[sim.PAYMENT][1] / spread.by_kind[sim.PAYMENT][0] < 0.30 * 0.85
    # Every movement is counted once, settlement once per merchant paid that day.
    assert spread.movements == by_merchant.movements > 5000
    assert spread.by_kind[sim.SETTLEMENT][1] == spread.by_kind[sim.SETTLEMENT][0]
    all_wallet = sim.Day(merchants=200, wallets=2000, cities=10, movements=5000, presented_share=0.0)
    rng = random.Random(7)
    world = sim.draw_world(all_wallet, rng)
    none_presented = sim.replay(sim.draw_day(all_wallet, world, rng), sim.placement("wallet+spread", world, 4))
    assert none_presented.cross_shard == none_presented.by_kind[sim.SETTLEMENT][0]
    # Independent hashing over 4 shards crosses for about 3 payments in 4.
    payments, crossed = by_merchant.by_kind[sim.PAYMENT]
    assert 0.70 < crossed / payments < 0.80

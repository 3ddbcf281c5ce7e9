"""The benchmark's drift-corrected comparison (``bench/paybench/figures.against_drift``): a block is judged
against the line through the unchanged load's blocks on either side of it, at its own moment."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from paybench.figures import Block, against_drift, against_yardstick, cost_of  # noqa: E402


def test_a_steady_drift_is_taken_out() -> None:
    # The host speeds up from 400/s to 700/s across the round; the switched-on blocks cost exactly 10%.
    offs = [Block(400.0, 0.0), Block(700.0, 30.0)]
    on = [[Block(0.9 * 500.0, 10.0), Block(0.9 * 600.0, 20.0)]]
    assert against_drift(offs, on) == [[pytest.approx(0.9), pytest.approx(0.9)]]


def test_the_mean_of_the_two_off_blocks_would_not_be_the_same() -> None:
    # Against the plain mean (550/s) the first block would read 0.82x: the weighting is what the test shows.
    offs = [Block(400.0, 0.0), Block(700.0, 30.0)]
    ratio = against_drift(offs, [[Block(450.0, 10.0)]])[0][0]
    assert ratio == pytest.approx(0.9)
    assert 450.0 / 550.0 < 0.85


def test_each_round_uses_its_own_off_blocks() -> None:
    offs = [Block(100.0, 0.0), Block(200.0, 10.0), Block(100.0, 20.0)]
    ratios = against_drift(offs, [[Block(150.0, 5.0)], [Block(75.0, 15.0)]])
    assert ratios == [[pytest.approx(1.0)], [pytest.approx(0.5)]]


def test_blocks_outside_their_round_or_missing_off_blocks_are_refused() -> None:
    with pytest.raises(ValueError):
        against_drift([Block(100.0, 0.0)], [[Block(90.0, 5.0)]])
    with pytest.raises(ValueError):
        against_drift([Block(100.0, 0.0), Block(100.0, 10.0)], [[Block(90.0, 11.0)]])


# --- the CPU yardstick (``figures.against_yardstick``) ---------------------------------------------------------


def _cpu(client: float, server: float, busy: float = 1.98) -> dict[str, float]:
    """cores busy: the bench client, and the gateway / PostgreSQL / Redis / irq together (split evenly)."""
    return {"gateway": server / 2, "postgres": server / 4, "redis": server / 8, "kernel irq": server / 8,
            "bench client": client, "machine": busy, "of cores": 2.0}


def test_a_machine_slowing_within_a_block_moves_no_cpu_figure() -> None:
    # Same code in both blocks; in the second the machine runs 20% slower (every process's CPU per payment
    # grows alike) and the rate falls: the rates read 0.83x, the yardstick reads 1.0x.
    off = Block(500.0, 0.0, cost_of(_cpu(client=0.25, server=1.73), 500.0))
    slow = Block(500.0 / 1.2, 10.0, cost_of(_cpu(client=0.25, server=1.73), 500.0 / 1.2))
    after = Block(500.0, 20.0, cost_of(_cpu(client=0.25, server=1.73), 500.0))
    assert against_drift([off, after], [[slow]]) == [[pytest.approx(1 / 1.2)]]
    assert against_yardstick([off, after], [[slow]]) == [[pytest.approx(1.0)]]


def test_a_block_that_costs_more_cpu_reads_its_rate_at_the_same_machine_speed() -> None:
    # The server's CPU per payment grows by a tenth of the whole (client + server): 0.9x of the rate.
    off = Block(500.0, 0.0, cost_of(_cpu(client=0.25, server=1.73), 500.0))
    client_ms, server_ms = 0.25 / 500.0, 1.73 / 500.0
    costly_rate = 0.9 * 500.0  # what the same machine gives at a ninth more CPU per payment (all cores busy)
    costly = Block(costly_rate, 10.0, cost_of(_cpu(client=client_ms * costly_rate,
                                                   server=(server_ms + (client_ms + server_ms) / 9) * costly_rate),
                                              costly_rate))
    after = Block(500.0, 20.0, cost_of(_cpu(client=0.25, server=1.73), 500.0))
    assert against_yardstick([off, after], [[costly]]) == [[pytest.approx(0.9)]]


def test_a_block_whose_machine_was_not_cpu_bound_has_no_yardstick_figure() -> None:
    assert cost_of(_cpu(client=0.2, server=1.2, busy=1.5), 400.0) is None  # waits, not CPU, set its rate
    assert cost_of({"gateway": 1.0, "machine": 1.99, "of cores": 2.0}, 400.0) is None  # no client CPU measured
    assert cost_of(_cpu(client=0.25, server=1.73), 0.0) is None
    off = Block(500.0, 0.0, cost_of(_cpu(client=0.25, server=1.73), 500.0))
    idle = Block(300.0, 10.0, None)
    assert against_yardstick([off, off], [[idle]]) is None

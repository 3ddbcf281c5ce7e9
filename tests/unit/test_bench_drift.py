"""The benchmark's drift-corrected comparison (``bench/paybench/figures.against_drift``): a block is judged
against the line through the unchanged load's blocks on either side of it, at its own moment."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from paybench.figures import Block, against_drift  # noqa: E402


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

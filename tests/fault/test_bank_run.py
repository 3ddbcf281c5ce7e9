"""The bank run at CI size (~90 s with setup) with a fixed seed, so that CI replays one known schedule
(six kinds of fault; ``FAULT_SEED`` picks another, ``FAULT_SEED=random`` a fresh one, printed; replay
it with ``./dev faults --duration 75 --seed N``); long runs with new seeds are ``./dev faults``. ``FAULT_DURATION_S`` sets
the load time; ``FAULT_ALLOW_500_IN_FAULTS=1`` tolerates a 500 answered during a fault window
(only a 500 outside every window is then an anomaly). Deselect with ``-m "not bank_run"``."""

from __future__ import annotations

import os
import random

import pytest

from tests.fault.bank import Options, run

pytestmark = pytest.mark.bank_run

LOAD_S = float(os.environ.get("FAULT_DURATION_S", "75"))
CI_SEED = 1289962680  # pg_pause, redis_kill, pg_crash, a gateway stalled past the key lock, redis_pause, all killed


async def test_bank_run_under_faults() -> None:
    chosen = os.environ.get("FAULT_SEED", str(CI_SEED))
    seed = random.SystemRandom().randrange(2**31) if chosen == "random" else int(chosen)
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    options = Options(seed=seed, duration_s=LOAD_S,
                      allow_500_in_faults=os.environ.get("FAULT_ALLOW_500_IN_FAULTS") == "1")
    report = await run(options, out=out)
    assert report.confirmed > 0, "\n".join(lines)
    assert not report.anomalies, "\n".join(lines)

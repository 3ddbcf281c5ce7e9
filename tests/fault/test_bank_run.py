"""The bank run at CI size (~2 minutes with setup): a fresh seed each time (printed; replay it with
``./dev faults --seed N``), or the one in ``FAULT_SEED``. Deselect with ``-m "not bank_run"``."""

from __future__ import annotations

import os
import random

import pytest

from tests.fault.bank import Options, run

pytestmark = pytest.mark.bank_run

LOAD_S = float(os.environ.get("FAULT_DURATION_S", "75"))


async def test_bank_run_under_faults() -> None:
    seed = int(os.environ.get("FAULT_SEED") or random.SystemRandom().randrange(2**31))
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    report = await run(Options(seed=seed, duration_s=LOAD_S), out=out)
    assert report.confirmed > 0, "\n".join(lines)
    assert not report.anomalies, "\n".join(lines)

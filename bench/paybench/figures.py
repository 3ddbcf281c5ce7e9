"""What a phase observed and how it is reported: percentiles, phase results, goal lines, the gateway's log, the plot.

Every figure printed is computed from what the run measured; nothing here holds a number of its own but the goals'
thresholds (in config).
"""

from __future__ import annotations

import collections
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any, ClassVar

from paybench.config import GOAL_HALF_LOAD_P99_MS_MAX


def percentile_ms(values_s: list[float], pct: float) -> float | None:
    """Nearest-rank percentile, in milliseconds."""
    if not values_s:
        return None
    ordered = sorted(values_s)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)] * 1000


def _pct(values_ms: list[float], pct: float) -> float | None:
    return percentile_ms([v / 1000 for v in values_ms], pct)


def fmt_ms(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:6.1f}"


@dataclass
class Recorder:
    """What one phase observed. Only the event loop touches it (no await between read and write)."""

    whole_s: list[float] = field(default_factory=list)
    call_s: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    attempted: int = 0
    confirmed: int = 0
    # (path, token, Idempotency-Key) of each confirmed payment's last call: what a replay phase re-sends.
    replayable: list[tuple[str, str, str]] = field(default_factory=list)


# Whose CPU a payment costs (the keys of ``system.cpu_cores`` that are one party each).
_CPU_OWNERS = ("gateway", "postgres", "redis", "bench client", "kernel irq")


@dataclass
class PhaseResult:
    name: str
    rec: Recorder
    elapsed_s: float
    cpu: dict[str, float]
    server_ms: dict[str, list[float]] = field(default_factory=dict)
    server_5xx: int = 0
    db_waits: collections.Counter[str] = field(default_factory=collections.Counter)
    db_waits_failed: str | None = None  # why the wait sampling stopped early, if it did
    rss_mb: float | None = None  # the largest serving process's VmRSS as the phase ended

    @property
    def rate_per_s(self) -> float:
        return self.rec.confirmed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def cpu_ms_per_payment(self) -> dict[str, float]:
        """CPU time per confirmed payment by owner (cores busy / payments per second): where a payment's
        cost goes, and the figure that decides the rate on a machine whose cores are all busy."""
        rate = self.rate_per_s
        if rate <= 0:
            return {}
        return {k: 1000 * self.cpu[k] / rate for k in _CPU_OWNERS if k in self.cpu}

    def figures(self) -> dict[str, Any]:
        calls = {step: {"n": len(v), "p50_ms": percentile_ms(v, 50), "p99_ms": percentile_ms(v, 99)}
                 for step, v in self.rec.call_s.items()}
        return {
            "attempted": self.rec.attempted, "confirmed": self.rec.confirmed, "elapsed_s": self.elapsed_s,
            "payments_per_s": self.rate_per_s, "p50_ms": percentile_ms(self.rec.whole_s, 50),
            "p99_ms": percentile_ms(self.rec.whole_s, 99), "calls": calls, "errors": dict(self.rec.errors),
            "cpu_cores": self.cpu, "cpu_ms_per_payment": self.cpu_ms_per_payment(), "server_5xx": self.server_5xx, "db_waits": dict(self.db_waits),
            "rss_mb": self.rss_mb,
            "server_calls": {step: {"n": len(v), "p50_ms": _pct(v, 50), "p99_ms": _pct(v, 99)}
                             for step, v in self.server_ms.items()},
        }

    def print(self) -> None:
        r = self.rec
        print(f"  confirmed {r.confirmed} of {r.attempted} attempted in {self.elapsed_s:.2f} s"
              f" -> {self.rate_per_s:,.1f} confirmed payments/s")
        print(f"  whole payment   p50 {fmt_ms(percentile_ms(r.whole_s, 50))} ms"
              f"   p99 {fmt_ms(percentile_ms(r.whole_s, 99))} ms   (n={len(r.whole_s)})")
        for step, values in r.call_s.items():
            print(f"  {step:<15} p50 {fmt_ms(percentile_ms(values, 50))} ms"
                  f"   p99 {fmt_ms(percentile_ms(values, 99))} ms   (n={len(values)})")
        if r.errors:
            print("  errors:")
            for what, n in r.errors.most_common():
                print(f"    {n:6d}  {what}")
        else:
            print("  errors: none")
        if self.server_ms:
            print("  server side (the gateway's own log: handler time, no queueing before it):")
            for step, values_ms in self.server_ms.items():
                print(f"  {step:<15} p50 {fmt_ms(_pct(values_ms, 50))} ms   p99 {fmt_ms(_pct(values_ms, 99))} ms"
                      f"   (n={len(values_ms)})")
            print(f"  5xx responses logged: {self.server_5xx}")
        if self.cpu:
            print(f"  cpu (cores busy on average): {cpu_text(self.cpu)}")
            per_payment = self.cpu_ms_per_payment()
            if per_payment:
                shown = ", ".join(f"{k} {v:.2f}" for k, v in per_payment.items())
                print(f"  cpu ms per confirmed payment: {shown}")
        total = sum(self.db_waits.values())
        if total:
            shown = ", ".join(f"{what} {100 * n / total:.0f}%" for what, n in self.db_waits.most_common(8))
            print(f"  database backends of the gateway, by state / wait event (sampled): {shown}")
        if self.db_waits_failed:
            print(f"  (the database wait sampling stopped early: {self.db_waits_failed})")


def cpu_text(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())


def write_plot(points: list[dict[str, Any]], peak_per_s: float, path: Path) -> str:
    """p50 and p99 of a whole payment against the offered rate; where it went, or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: render to a file
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (the [test] extra has it): no plot"
    measured = [pt for pt in points if pt["p50_ms"] is not None]
    if not measured:
        return "no payment confirmed in the sweep: no plot"
    offered = [pt["offered_per_s"] for pt in measured]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(offered, [pt["p50_ms"] for pt in measured], "o-", label="p50")
    ax.plot(offered, [pt["p99_ms"] for pt in measured], "s-", label="p99")
    ax.axhline(GOAL_HALF_LOAD_P99_MS_MAX, color="grey", linestyle=":", label=f"p99 goal at half load ({GOAL_HALF_LOAD_P99_MS_MAX:g} ms)")
    ax.axvline(peak_per_s, color="grey", linestyle="--", label=f"phase A peak ({peak_per_s:,.1f}/s)")
    ax.set_xlabel("offered payments/s (open loop)")
    ax.set_ylabel("whole payment latency, ms")
    ax.set_yscale("log")
    ax.set_title("bench/payments.py: latency against offered load (automatic capture, spread)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def banner(text: str) -> None:
    print(f"\n== {text} ==", flush=True)


def goal_line(label: str, value: float | None, unit: str, goal: str, met: bool | None) -> str:
    shown = "n/a" if value is None else f"{value:,.2f}{unit}"
    verdict = "not measured" if met is None else ("met" if met else "MISSED")
    return f"  {label:<46} {shown:>12}   goal {goal:<9} -> {verdict}"


def gateway_errors(log_path: Path, shown_max: int = 5) -> tuple[int, list[str]]:
    """Error-level lines in the gateway's JSON log (500s are logged with their traceback)."""
    count, shown = 0, list[str]()
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            if "Traceback" in line or "Error" in line:
                count += 1
                if len(shown) < shown_max:
                    shown.append(line[:300])
            continue
        if isinstance(record, dict) and record.get("level") in {"error", "critical"}:
            count += 1
            if len(shown) < shown_max:
                exc = str(record.get("exc", "")).strip().splitlines()
                shown.append(f"{record.get('msg')} {record.get('path', '')} {exc[-1] if exc else ''}".strip())
    return count, shown


class GatewayLog:
    """Reads the gateway's JSON log incrementally: the request lines written since the last read."""

    STEPS: ClassVar[dict[str, str]] = {"/v1/payments": "create", "/v1/wallet/payments/{id}/pay": "pay", "/v1/payments/{id}/capture": "capture"}

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def attach(self, result: PhaseResult) -> PhaseResult:
        """Give ``result`` the server-side view of the requests logged since the previous call.

        Between phases only VACUUM runs, so these are exactly the phase's requests: the gateway logs
        a request before it sends the response, and its stderr is line-buffered.
        """
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        server_ms: dict[str, list[float]] = collections.defaultdict(list)
        for line in complete.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or record.get("msg") != "request":
                continue
            if int(record.get("status", 0)) >= 500:
                result.server_5xx += 1
            step = self.STEPS.get(str(record.get("route")))
            if step is not None and int(record.get("status", 0)) < 400:
                server_ms[step].append(float(record.get("duration_ms", 0.0)))
        result.server_ms = dict(server_ms)
        return result


@dataclass(frozen=True)
class Block:
    """One short closed-loop block of an interleaved comparison: its rate, the middle of its time span
    (seconds on the run's monotonic clock) and its CPU cost (``cost_of``; None: not measured or not CPU-bound)."""

    rate_per_s: float
    mid_s: float
    cost: float | None = None


# A block whose machine was busier than this share of its cores was CPU-bound: its rate is cores over the CPU a
# payment costs, so the CPU per payment tells the rate (``cost_of``).
CPU_BOUND_SHARE = 0.9
_SERVING = ("gateway", "postgres", "redis", "kernel irq")  # the CPU owners that serve a payment (not the client)


def cost_of(cpu: dict[str, float], rate_per_s: float) -> float | None:
    """The CPU that serving a confirmed payment took (gateway, PostgreSQL, Redis, kernel irq) in units of the
    bench client's own CPU per payment; None when the machine was not CPU-bound (busy below ``CPU_BOUND_SHARE``
    of its cores: waits, not CPU, set the rate) or the client's CPU is unknown.

    The client does the same work for every payment of a load (the same calls, the same bodies), so its CPU
    per payment is a yardstick of the machine's speed at that moment: a host that runs slower for a while
    (another tenant, a lower clock) stretches every process's CPU alike, and the quotient does not move."""
    client = cpu.get("bench client", 0.0)
    if rate_per_s <= 0 or client <= 0 or cpu.get("machine", 0.0) < CPU_BOUND_SHARE * cpu.get("of cores", 1.0):
        return None
    return sum(cpu.get(k, 0.0) for k in _SERVING) / client


def _against_offs(offs: list[Block], rounds: list[list[Block]],
                  judge: Callable[[Block, Block, Block, float], float]) -> list[list[float]]:
    """``judge(before, after, block, w)`` of each ``rounds[r][j]`` block between the off blocks on either side of
    its round (``offs[r]``, ``offs[r + 1]``), ``w`` being where its middle lies between theirs (0 to 1)."""
    if len(offs) != len(rounds) + 1:
        raise ValueError("one off block before every round and one after the last")
    ratios: list[list[float]] = []
    for r, blocks in enumerate(rounds):
        before, after = offs[r], offs[r + 1]
        span_s = after.mid_s - before.mid_s
        if span_s <= 0 or any(not before.mid_s <= b.mid_s <= after.mid_s for b in blocks):
            raise ValueError("a round's blocks lie between its two off blocks")
        ratios.append([judge(before, after, b, (b.mid_s - before.mid_s) / span_s) for b in blocks])
    return ratios


def against_drift(offs: list[Block], rounds: list[list[Block]]) -> list[list[float]]:
    """Each ``rounds[r][j]`` block's rate over the rate the machine gave the unchanged load at that moment:
    the straight line through the off blocks on either side of it (``offs[r]`` before round r, ``offs[r + 1]``
    after it), read at the block's middle. A host whose speed drifts steadily within a run moves both alike;
    what remains is the cost of what the round's blocks switched on. Returns ``[r][j]`` ratios."""

    def judge(before: Block, after: Block, b: Block, w: float) -> float:
        baseline = before.rate_per_s * (1 - w) + after.rate_per_s * w
        return b.rate_per_s / baseline if baseline > 0 else 0.0

    return _against_offs(offs, rounds, judge)


def against_yardstick(offs: list[Block], rounds: list[list[Block]]) -> list[list[float]] | None:
    """``against_drift`` read from CPU instead of rates: each block's rate over the off blocks' at the same
    machine speed, estimated from its cost (``cost_of``). With every core busy, the client and the server
    share the cores, so a payment's rate goes as 1 / (client + server CPU per payment) = 1 / (client's
    CPU x (1 + cost)), and at equal machine speed (equal client CPU per payment) one block's rate over
    another's is (1 + their cost) / (1 + its cost). The off cost at the block's moment is the straight line
    through the off blocks around it, as in ``against_drift``. None when a block has no cost (not CPU-bound:
    then only the rates tell)."""
    if any(b.cost is None for b in offs) or any(b.cost is None for blocks in rounds for b in blocks):
        return None

    def judge(before: Block, after: Block, b: Block, w: float) -> float:
        assert before.cost is not None and after.cost is not None and b.cost is not None
        return (1 + before.cost * (1 - w) + after.cost * w) / (1 + b.cost)

    return _against_offs(offs, rounds, judge)

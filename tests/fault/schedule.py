"""The nemesis's schedule: a pure function of the seed, generated before the run starts.

Faults never overlap, so each recovery is attributed to exactly one fault. The first round
takes every kind once (in a seeded order) so that even a short run exercises them all; later
faults draw kinds at random, a gateway stall three times as often as the others (a stall that
catches a request between claiming its key and finishing is the rarest interleaving, and the
one that matters most for idempotency). Durations are drawn per kind; a gateway stall always lasts longer
than the idempotency key lock timeout (so another gateway may take the stalled request's key over).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum


class FaultKind(StrEnum):
    KILL_GATEWAY = "kill_gateway"            # SIGKILL one gateway, restart it after the duration
    KILL_ALL_GATEWAYS = "kill_all_gateways"  # SIGKILL every gateway, restart them all
    STALL_GATEWAY = "stall_gateway"          # SIGSTOP one gateway beyond the key lock timeout, then SIGCONT
    PG_CRASH = "pg_crash"                    # pg_ctl stop -m immediate, start after the duration
    PG_PAUSE = "pg_pause"                    # SIGSTOP every PostgreSQL process, SIGCONT after the duration
    REDIS_KILL = "redis_kill"                # SIGKILL redis-server, restart it after the duration
    REDIS_PAUSE = "redis_pause"              # SIGSTOP redis-server, SIGCONT after the duration


@dataclass(frozen=True, slots=True)
class Fault:
    index: int
    kind: FaultKind
    at_s: float          # from the start of the load
    duration_s: float
    target: int | None   # gateway index for single-gateway faults


_WEIGHTED = [*FaultKind, FaultKind.STALL_GATEWAY, FaultKind.STALL_GATEWAY]


def _duration_s(rng: random.Random, kind: FaultKind, lock_timeout_s: float) -> float:
    if kind is FaultKind.STALL_GATEWAY:
        return round(lock_timeout_s + rng.uniform(4.0, 7.0), 2)
    if kind in (FaultKind.PG_CRASH, FaultKind.PG_PAUSE):
        return round(rng.uniform(1.0, 4.0), 2)
    if kind in (FaultKind.KILL_GATEWAY, FaultKind.KILL_ALL_GATEWAYS):
        return round(rng.uniform(0.2, 2.0), 2)
    return round(rng.uniform(0.5, 3.0), 2)


def make_schedule(seed: int, duration_s: float, gateway_count: int, lock_timeout_s: float, *,
                  warmup_s: float = 3.0, cooldown_s: float = 6.0, gap_min_s: float = 2.0,
                  gap_max_s: float = 6.0, recovery_margin_s: float = 3.0) -> list[Fault]:
    """Faults from ``warmup_s`` until ``duration_s - cooldown_s``; after each fault ends, at least
    ``recovery_margin_s`` plus a random gap pass before the next one begins."""
    rng = random.Random(seed)
    first_round = list(FaultKind)
    rng.shuffle(first_round)
    faults: list[Fault] = []
    at_s = warmup_s + rng.uniform(0.0, gap_max_s / 2)
    while True:
        kind = first_round[len(faults)] if len(faults) < len(first_round) else rng.choice(_WEIGHTED)
        length_s = _duration_s(rng, kind, lock_timeout_s)
        target = rng.randrange(gateway_count) if kind in (FaultKind.KILL_GATEWAY, FaultKind.STALL_GATEWAY) else None
        if at_s + length_s > duration_s - cooldown_s:
            return faults
        faults.append(Fault(len(faults), kind, round(at_s, 2), length_s, target))
        at_s += length_s + recovery_margin_s + rng.uniform(gap_min_s, gap_max_s)

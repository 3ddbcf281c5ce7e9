"""Risk rules: which rules match a payment (pure; the counts are read by the caller).

Invariants:
- a ``blocked_wallet`` rule matches every payment of its holder;
- a ``velocity_wallet`` rule matches a payment when, with it, the holder's authorised payments within
  the rule's window would be more than ``max_count``, or (in the rule's currency) total more than
  ``max_amount_minor``;
- the outcome is "decline" when any rule matches; the reasons name the rules matched.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum


class RuleKind(StrEnum):
    BLOCKED_WALLET = "blocked_wallet"
    VELOCITY_WALLET = "velocity_wallet"


@dataclass(frozen=True, slots=True)
class Rule:
    id: uuid.UUID
    kind: RuleKind
    holder_id: uuid.UUID | None = None
    currency: str | None = None
    window_s: int | None = None
    max_count: int | None = None
    max_amount_minor: int | None = None


@dataclass(frozen=True, slots=True)
class Recent:
    """The holder's authorised payments within a window, before this one."""

    count: int
    amount_minor: int


def blocked(rules: tuple[Rule, ...], holder_id: uuid.UUID) -> list[Rule]:
    return [r for r in rules if r.kind is RuleKind.BLOCKED_WALLET and r.holder_id == holder_id]


def velocity_rules(rules: tuple[Rule, ...]) -> list[Rule]:
    return [r for r in rules if r.kind is RuleKind.VELOCITY_WALLET]


def over_velocity(rule: Rule, recent: Recent, currency: str, amount_minor: int) -> bool:
    if rule.max_count is not None and recent.count + 1 > rule.max_count:
        return True
    return (rule.max_amount_minor is not None and rule.currency == currency
            and recent.amount_minor + amount_minor > rule.max_amount_minor)

"""The wallet features of issue 13 switched on for one phase: a live campaign, an FX rate table and risk rules.

Issue 13 asks that, with a campaign, FX and the risk rules active, the payments figure stays within 10% of
the figure without them. ``switch_on`` makes all three live through the public operator API: a campaign eligible
to every merchant (every payment is discounted), three rates, and a blocked wallet the load never pays with;
``add_velocity`` adds a velocity limit per wallet far above what a run reaches, a rule that concerns (and
counts) every payment without changing its outcome; ``switch_off`` ends them all again, so that the later
phases measure the gateway as before.

Each call is a set-up call: anything but the expected status stops the benchmark (``Api.seed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .config import CURRENCY, HOLDER_PASSWORD
from .load import Api, World

# A discount on every payment: 1% (at most 0.50), bank-funded, with a budget no run reaches.
CAMPAIGN_PERCENT_BPS = 100
CAMPAIGN_CAP_MINOR = 50
CAMPAIGN_BUDGET_MINOR = 10**12
# A velocity limit a run cannot reach: the rule is evaluated at every authorisation but never declines.
VELOCITY_WINDOW_S = 3_600
VELOCITY_COUNT_MAX = 10**6
# Rates of the table (1 base = rate quote); the load pays in CURRENCY, so they price nothing of it, but a
# gateway that looks rates up on the hot path pays that here.
FX_RATES = (("USD", CURRENCY, "7.1234"), ("EUR", CURRENCY, "7.7021"), ("JPY", CURRENCY, "0.04812"))


@dataclass(frozen=True)
class Features:
    campaign_id: str
    rule_ids: tuple[str, ...]

    def describe(self) -> str:
        velocity = (f", a velocity limit per wallet (<= {VELOCITY_COUNT_MAX:,} in {VELOCITY_WINDOW_S} s)"
                    if len(self.rule_ids) > 1 else "")
        return (f"campaign {self.campaign_id} ({CAMPAIGN_PERCENT_BPS / 100:g}% off, bank-funded, every merchant),"
                f" {len(FX_RATES)} FX rates, risk rules {', '.join(self.rule_ids)} (a blocked wallet{velocity})")


def _window() -> dict[str, str]:
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    return {"time_zone": "UTC", "starts_at": (now - timedelta(minutes=5)).isoformat(),
            "ends_at": (now + timedelta(days=1)).isoformat()}


async def switch_on(api: Api, world: World) -> Features:
    ops = world.operator_token
    campaign = await api.seed("POST", "/v1/operator/campaigns", 201, ops, {
        "name": "Bench week", "currency": CURRENCY, "rule": "percent", "percent_bps": CAMPAIGN_PERCENT_BPS,
        "cap": CAMPAIGN_CAP_MINOR, "funded_by": "bank", "budget": CAMPAIGN_BUDGET_MINOR, **_window()})
    for base, quote, rate in FX_RATES:
        await api.seed("POST", "/v1/operator/fx_rates", 201, ops,
                       {"base": base, "quote": quote, "rate": rate, "spread_bps": 50})
    # A wallet the load never pays with, registered only to be blocked.
    outsider = await api.seed("POST", "/v1/wallet/holders", 201,
                              body={"phone": "+8619900000000", "password": HOLDER_PASSWORD,
                                    "device_id": "bench-blocked-device"})
    blocked = await api.seed("POST", "/v1/operator/risk_rules", 201, ops,
                             {"kind": "blocked_wallet", "wallet": outsider["id"]})
    return Features(campaign["id"], (blocked["id"],))


async def add_velocity(api: Api, world: World, features: Features) -> Features:
    """A velocity limit per wallet: a rule that concerns every payment (each is counted against it)."""
    velocity = await api.seed("POST", "/v1/operator/risk_rules", 201, world.operator_token,
                              {"kind": "velocity_wallet", "window_s": VELOCITY_WINDOW_S,
                               "max_count": VELOCITY_COUNT_MAX})
    return Features(features.campaign_id, (*features.rule_ids, velocity["id"]))


async def switch_off(api: Api, world: World, features: Features) -> None:
    ops = world.operator_token
    await api.seed("POST", f"/v1/operator/campaigns/{features.campaign_id}/end", 200, ops, {})
    for rule_id in features.rule_ids:
        await api.seed("POST", f"/v1/operator/risk_rules/{rule_id}/disable", 200, ops, {})

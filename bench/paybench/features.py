"""The wallet features of issue 13 switched on for one phase: a live campaign, an FX rate table and risk rules.

Issue 13 asks that, with a campaign, FX and the risk rules active, the payments figure stays within 10% of
the figure without them. ``switch_on`` makes all three live through the public operator API: a campaign eligible
to every merchant (every payment is discounted), three rates, and a blocked wallet the load never pays with;
``add_velocity`` adds one rule of every other kind, each concerning (and, for velocity, counting) every payment
without ever changing its outcome: velocity limits per wallet, per device and per merchant far above what a run
reaches, an unusual-amount rule (the load pays one amount, never 10 times its median), a new-device rule (every
load device was first seen at seeding, long before 1 s ago) and a blocked device the load never uses;
``switch_off`` ends them all again, so that the later phases measure the gateway as before.

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
# Velocity limits a run cannot reach: the rules are evaluated at every authorisation but never decline.
VELOCITY_WINDOW_S = 3_600
VELOCITY_COUNT_MAX = 10**6
# An amount above 10 times the holder's median (of at least 3 payments) would be unusual: the load pays one amount.
UNUSUAL_MULTIPLIER_PCT = 1_000
UNUSUAL_HISTORY_MIN = 3
# A device first seen less than 1 s ago, for any amount, would be new: the load's devices were seen at seeding.
NEW_DEVICE_AGE_S = 1
BLOCKED_DEVICE = "bench-device-never-used"
# Rates of the table (1 base = rate quote); the load pays in CURRENCY, so they price nothing of it, but a
# gateway that looks rates up on the hot path pays that here.
FX_RATES = (("USD", CURRENCY, "7.1234"), ("EUR", CURRENCY, "7.7021"), ("JPY", CURRENCY, "0.04812"))


@dataclass(frozen=True)
class Features:
    campaign_id: str
    rule_ids: tuple[str, ...]

    def describe(self) -> str:
        velocity = (f"; velocity limits per wallet, device and merchant (each <= {VELOCITY_COUNT_MAX:,} in"
                    f" {VELOCITY_WINDOW_S} s), an unusual amount (> {UNUSUAL_MULTIPLIER_PCT / 100:g} x the median"
                    f" of >= {UNUSUAL_HISTORY_MIN}), a new device (seen < {NEW_DEVICE_AGE_S} s ago, any amount) and"
                    f" a blocked device no payer uses: every payment concerned, none refused"
                    if len(self.rule_ids) > 1 else "")
        return (f"campaign {self.campaign_id} ({CAMPAIGN_PERCENT_BPS / 100:g}% off, bank-funded, every merchant),"
                f" {len(FX_RATES)} FX rates, risk rules {', '.join(self.rule_ids)} (a blocked wallet{velocity})")


def _window() -> dict[str, str]:
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    return {"time_zone": "UTC", "starts_at": (now - timedelta(minutes=5)).isoformat(),
            "ends_at": (now + timedelta(days=1)).isoformat()}


async def switch_on(api: Api, world: World, round_no: int = 0) -> Features:
    """Round ``round_no`` of the interleaved comparison: each round makes its own campaign, rates and rules
    (those of the rounds before were ended for good) and registers its own blocked wallet."""
    ops = world.operator_token
    campaign = await api.seed("POST", "/v1/operator/campaigns", 201, ops, {
        "name": "Bench week", "currency": CURRENCY, "rule": "percent", "percent_bps": CAMPAIGN_PERCENT_BPS,
        "cap": CAMPAIGN_CAP_MINOR, "funded_by": "bank", "budget": CAMPAIGN_BUDGET_MINOR, **_window()})
    for base, quote, rate in FX_RATES:
        await api.seed("POST", "/v1/operator/fx_rates", 201, ops,
                       {"base": base, "quote": quote, "rate": rate, "spread_bps": 50})
    # A wallet the load never pays with, registered only to be blocked.
    outsider = await api.seed("POST", "/v1/wallet/holders", 201,
                              body={"phone": f"+861990000{round_no:04d}", "password": HOLDER_PASSWORD,
                                    "device_id": f"bench-blocked-device-{round_no}"})
    blocked = await api.seed("POST", "/v1/operator/risk_rules", 201, ops,
                             {"kind": "blocked_wallet", "wallet": outsider["id"]})
    return Features(campaign["id"], (blocked["id"],))


async def add_velocity(api: Api, world: World, features: Features) -> Features:
    """One rule of every kind but the blocked wallet: each concerns every payment of the load (the velocity
    rules count each) and none is ever reached."""
    velocity = {"window_s": VELOCITY_WINDOW_S, "max_count": VELOCITY_COUNT_MAX}
    rules = ({"kind": "velocity_wallet", **velocity}, {"kind": "velocity_device", **velocity},
             {"kind": "velocity_merchant", **velocity},
             {"kind": "amount_unusual", "currency": CURRENCY, "multiplier_pct": UNUSUAL_MULTIPLIER_PCT,
              "baseline": "median", "history_min": UNUSUAL_HISTORY_MIN},
             {"kind": "new_device", "currency": CURRENCY, "device_age_s": NEW_DEVICE_AGE_S, "min_amount": 0},
             {"kind": "blocked_device", "device_id": BLOCKED_DEVICE})
    ids = [(await api.seed("POST", "/v1/operator/risk_rules", 201, world.operator_token, rule))["id"]
           for rule in rules]
    return Features(features.campaign_id, (*features.rule_ids, *ids))


async def switch_off(api: Api, world: World, features: Features) -> None:
    ops = world.operator_token
    await api.seed("POST", f"/v1/operator/campaigns/{features.campaign_id}/end", 200, ops, {})
    for rule_id in features.rule_ids:
        await api.seed("POST", f"/v1/operator/risk_rules/{rule_id}/disable", 200, ops, {})

"""The wallet features of issue 13 switched on for one phase: a live campaign, an FX rate table and risk rules.

Issue 13 asks that, with a campaign, FX and the risk rules active, the payments figure stays within 10% of
the figure without them. ``switch_on`` makes all three live through the public operator API, chosen so that
every payment of phase A is looked at by each of them (the campaign is eligible to every merchant, the rules
apply to every wallet) but none of them changes the phase's outcome (the velocity limit is far above what a
run can reach, the blocked wallet is one the load never pays with); ``switch_off`` ends them again, so that
the later phases measure the gateway as before.

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
        return (f"campaign {self.campaign_id} ({CAMPAIGN_PERCENT_BPS / 100:g}% off, bank-funded, every merchant),"
                f" {len(FX_RATES)} FX rates, risk rules {', '.join(self.rule_ids)}"
                f" (velocity per wallet <= {VELOCITY_COUNT_MAX:,} in {VELOCITY_WINDOW_S} s, one blocked wallet)")


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
    velocity = await api.seed("POST", "/v1/operator/risk_rules", 201, ops,
                              {"kind": "velocity_wallet", "window_s": VELOCITY_WINDOW_S,
                               "max_count": VELOCITY_COUNT_MAX})
    return Features(campaign["id"], (blocked["id"], velocity["id"]))


async def switch_off(api: Api, world: World, features: Features) -> None:
    ops = world.operator_token
    await api.seed("POST", f"/v1/operator/campaigns/{features.campaign_id}/end", 200, ops, {})
    for rule_id in features.rule_ids:
        await api.seed("POST", f"/v1/operator/risk_rules/{rule_id}/disable", 200, ops, {})

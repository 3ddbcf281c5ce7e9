"""Adversarial review of issue 13 (FX, promotions, budgets/notifications, sign-in): each test is a bug
found in review, failing before its fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.integration.world import World


def _window(hours: int = 2) -> dict[str, str]:
    now = datetime.now(UTC).replace(tzinfo=None)
    return {"time_zone": "UTC", "starts_at": (now - timedelta(hours=1)).isoformat(timespec="seconds"),
            "ends_at": (now + timedelta(hours=hours)).isoformat(timespec="seconds")}


def _campaign_body(**terms: Any) -> dict[str, Any]:
    return {"name": "Review", "currency": "CNY", "rule": "percent", "percent_bps": 1_000, "funded_by": "bank",
            "budget": 1_000_000, **_window(), **terms}


async def test_campaign_counts_beyond_int32_are_refused_not_500(world: World) -> None:
    for field in ("per_holder_limit", "places"):
        for value in (2**31, 10**15, -(2**31) - 1):
            got = await world.call("POST", "/v1/operator/campaigns", 400, headers=world.ops,
                                   json=_campaign_body(**{field: value}))
            assert got["error"]["param"] == field, got
    got = await world.call("POST", "/v1/operator/campaigns", 400, headers=world.ops,
                           json=_campaign_body(percent_bps=2**63))
    assert got["error"]["param"] == "percent_bps", got

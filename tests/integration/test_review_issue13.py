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


HEADER = "base,quote,rate,spread_bps,valid_from,valid_until\n"


async def test_rates_file_with_a_non_ascii_digit_spread_is_refused_not_500(world: World) -> None:
    for spread in ("\u00b2", "\u2460"):  # str.isdigit() is true for both, int() refuses them
        got = await world.call("POST", "/v1/operator/fx_rates/import", 400, headers=world.ops,
                               json={"content": HEADER + f"USD,CNY,7.1,{spread},,\n"})
        assert (got["error"]["code"], got["error"]["param"]) == ("invalid_rate_file", "line 2"), got


async def test_rate_timestamps_beyond_the_datetime_range_in_utc_are_refused_not_500(world: World) -> None:
    for field, text in (("valid_from", "0001-01-01T00:00:00+14:00"), ("valid_until", "9999-12-31T23:59:59-10:00")):
        got = await world.call("POST", "/v1/operator/fx_rates", 400, headers=world.ops,
                               json={"base": "USD", "quote": "CNY", "rate": "7.1", field: text})
        assert (got["error"]["code"], got["error"]["param"]) == ("invalid_timestamp", field), got
    got = await world.call("POST", "/v1/operator/fx_rates/import", 400, headers=world.ops,
                           json={"content": HEADER + "USD,CNY,7.1,1,0001-01-01T00:00:00+14:00,\n"})
    assert (got["error"]["code"], got["error"]["param"]) == ("invalid_rate_file", "line 2"), got


async def test_rate_text_is_ascii_digits_only(world: World) -> None:
    for text in ("\u0663.5", "1_0", "\uff17.1"):  # Decimal() reads Arabic-Indic and fullwidth digits and underscores
        got = await world.call("POST", "/v1/operator/fx_rates", 400, headers=world.ops,
                               json={"base": "USD", "quote": "CNY", "rate": text})
        assert got["error"]["code"] == "invalid_rate", got


async def test_campaign_window_beyond_the_datetime_range_in_utc_is_refused_not_500(world: World) -> None:
    cases = (("Asia/Tokyo", "0001-01-01T00:00:00", "2030-01-01T00:00:00", "starts_at"),
             ("America/Los_Angeles", "2020-01-01T00:00:00", "9999-12-31T23:00:00", "ends_at"))
    for zone, starts, ends, param in cases:
        got = await world.call("POST", "/v1/operator/campaigns", 400, headers=world.ops,
                               json=_campaign_body(time_zone=zone, starts_at=starts, ends_at=ends))
        assert got["error"]["param"] == param, got

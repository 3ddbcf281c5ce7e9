"""Token buckets and lockout backoff (gateway/domain/throttle.py): pure arithmetic, the clock passed in."""

from __future__ import annotations

import pytest

from gateway.domain import throttle
from gateway.domain.throttle import Backoff, Level, Rate, lockout_s, schedule, take, tokens_at

FIVE_PER_S = Rate(per_s=5.0, burst=5.0)


def run(rate: Rate, times_s: list[float]) -> list[bool]:
    """Admit or refuse a request at each time, keeping the bucket as a caller would."""
    level: Level | None = None
    admitted = []
    for now_s in times_s:
        decision = take([(rate, level)], now_s)
        level = decision.levels[0]
        admitted.append(decision.admitted)
    return admitted


def fixed_window(limit: int, times_s: list[float]) -> list[bool]:
    """The limiter this replaces: a counter per whole second."""
    counts: dict[int, int] = {}
    admitted = []
    for now_s in times_s:
        window = int(now_s)
        counts[window] = counts.get(window, 0) + 1
        admitted.append(counts[window] <= limit)
    return admitted


def test_a_new_bucket_is_full_and_admits_its_burst_then_refuses() -> None:
    assert run(FIVE_PER_S, [100.0] * 6) == [True] * 5 + [False]


def test_at_a_window_edge_the_bucket_admits_its_burst_where_a_fixed_window_admits_twice_the_limit() -> None:
    # Five requests just before a second turns, five just after: 20 ms in all.
    times_s = [99.99] * 5 + [100.01] * 5
    assert sum(fixed_window(5, times_s)) == 10
    assert sum(run(FIVE_PER_S, times_s)) == 5


def test_no_interval_admits_more_than_burst_plus_rate_times_its_length() -> None:
    times_s = [i * 0.01 for i in range(1000)]  # 100 requests a second for 10 s
    admitted = [t for t, ok in zip(times_s, run(FIVE_PER_S, times_s), strict=True) if ok]
    for start in admitted:
        for length_s in (0.05, 0.5, 1.0, 3.0):
            inside = sum(1 for t in admitted if start <= t < start + length_s)
            assert inside <= FIVE_PER_S.burst + FIVE_PER_S.per_s * length_s + 1e-9


def test_the_wait_is_exactly_the_time_until_the_next_token() -> None:
    drained = Level(tokens=0.0, at_s=10.0)
    decision = take([(FIVE_PER_S, drained)], 10.1)  # 0.5 of a token refilled
    assert not decision.admitted and decision.wait_s == pytest.approx(0.1)
    assert take([(FIVE_PER_S, decision.levels[0])], 10.2).admitted


def test_refill_is_capped_at_the_burst_and_a_clock_going_back_adds_nothing() -> None:
    assert tokens_at(FIVE_PER_S, Level(1.0, 0.0), 3600.0) == 5.0
    assert tokens_at(FIVE_PER_S, Level(1.0, 50.0), 40.0) == 1.0


def test_several_buckets_are_taken_all_or_nothing_and_the_longest_wait_wins() -> None:
    slow = Rate(per_s=0.5, burst=1.0)
    empty_slow = Level(0.0, 0.0)
    decision = take([(FIVE_PER_S, Level(5.0, 0.0)), (slow, empty_slow)], 0.0)
    assert decision.wait_s == pytest.approx(2.0)
    assert decision.levels[0].tokens == 5.0  # the refused request cost the other bucket nothing
    assert take([(FIVE_PER_S, decision.levels[0]), (slow, decision.levels[1])], 2.0).levels[0].tokens == 4.0


def test_a_rate_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        Rate(per_s=0.0, burst=5.0)
    with pytest.raises(ValueError):
        Rate(per_s=1.0, burst=0.5)


BACKOFF = Backoff(failures_before_lockout=5, base_s=60, max_s=900)


def test_the_lockout_starts_at_the_fifth_failure_and_doubles_up_to_the_cap() -> None:
    assert [lockout_s(BACKOFF, n) for n in range(1, 11)] == [0, 0, 0, 0, 60, 120, 240, 480, 900, 900]
    assert lockout_s(BACKOFF, 10**9) == 900  # no power of two is ever computed past the cap


def test_the_schedule_lists_each_lockout_until_the_cap_which_then_repeats() -> None:
    assert schedule(BACKOFF) == [0, 0, 0, 0, 60, 120, 240, 480, 900]
    assert schedule(Backoff(1, 5, 5)) == [5]


def test_a_backoff_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(0, 60, 900)
    with pytest.raises(ValueError):
        Backoff(5, 60, 30)


def test_client_network_groups_an_ipv6_subscriber_and_keeps_ipv4_addresses() -> None:
    net = throttle.client_network
    assert net("2001:db8:dead:beef::1", 64) == net("2001:db8:dead:beef:ffff::2", 64) == "2001:db8:dead:beef::/64"
    assert net("2001:db8:dead:bef0::1", 64) != net("2001:db8:dead:beef::1", 64)
    assert net("203.0.113.9", 64) == "203.0.113.9"
    assert net("::ffff:203.0.113.9", 64) == "203.0.113.9"
    assert net("fe80::1%eth0", 64) == "fe80::/64"
    assert net(None, 64) == net("not an address", 64) == "unknown"


def test_forwarded_client_trusts_only_the_proxies_it_is_told_of() -> None:
    fc = throttle.forwarded_client
    assert fc("203.0.113.9", ["198.51.100.1"], {"127.0.0.1"}) == "203.0.113.9"  # not from a proxy: ignored
    assert fc("127.0.0.1", ["10.0.0.1, 203.0.113.9"], {"127.0.0.1"}) == "203.0.113.9"  # left hops are claims
    assert fc("127.0.0.1", ["203.0.113.9, 10.1.1.1"], {"127.0.0.1", "10.1.1.1"}) == "203.0.113.9"
    assert fc("127.0.0.1", [], {"127.0.0.1"}) == "127.0.0.1"

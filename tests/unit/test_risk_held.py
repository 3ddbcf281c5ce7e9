"""What a payment held for its step-ups must pass to be confirmed (``domain.risk.asked``)."""

from __future__ import annotations

from gateway.domain.risk import Outcome, StepUp, asked


def test_asked_is_every_step_up_the_matched_rules_ask_for() -> None:
    assert asked([Outcome.REQUIRE_PIN]) == {StepUp.PIN}
    assert asked([Outcome.REQUIRE_OTP, Outcome.REQUIRE_PIN, Outcome.REQUIRE_PIN]) == {StepUp.PIN, StepUp.OTP}
    assert asked([Outcome.ALLOW, Outcome.DECLINE]) == frozenset()

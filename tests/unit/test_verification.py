"""The pure rules of sign-in security: levels and tiers, codes, callback signatures, retry waits."""

from __future__ import annotations

import base64

import pytest

from gateway.domain import verification, webhooks
from gateway.domain.verification import Level, upgrade

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
BODY = b'{"holder":"wh_1","level":"real_name"}'


def test_levels_open_the_tiers_of_the_issue() -> None:
    assert [verification.tier_for(level) for level in Level] == [None, 4, 3, 2, 1]
    assert [verification.level_for_tier(t) for t in (4, 3, 2, 1)] == [Level.PHONE, Level.REAL_NAME,
                                                                      Level.BANK_CARD, Level.IN_PERSON]
    assert Level.named("bank_card") is Level.BANK_CARD and Level.named("nope") is None
    assert verification.UPGRADABLE == ("phone", "real_name", "bank_card", "in_person")


def test_an_upgrade_never_lowers_a_level_nor_weakens_a_tier() -> None:
    assert upgrade(Level.PHONE, 4, Level.REAL_NAME) == verification.Upgrade(Level.REAL_NAME, 3, True)
    assert upgrade(Level.BANK_CARD, 2, Level.PHONE) == verification.Upgrade(Level.BANK_CARD, 2, False)
    assert upgrade(Level.REAL_NAME, 3, Level.REAL_NAME).changed is False
    # An operator set tier 1 by hand: a real-name verification keeps it.
    assert upgrade(Level.PHONE, 1, Level.REAL_NAME) == verification.Upgrade(Level.REAL_NAME, 1, True)
    assert upgrade(Level.NONE, 4, Level.PHONE) == verification.Upgrade(Level.PHONE, 4, True)


def test_codes_are_digits_from_the_randomness_given() -> None:
    assert verification.new_code(6, lambda n: 42) == "000042"
    assert verification.new_code(6, lambda n: n - 1) == "999999"
    assert verification.valid_code_format("012345", 6)
    assert not any(verification.valid_code_format(c, 6) for c in ("12345", "1234567", "12a456", "１２３４５６"))


def test_a_code_hash_is_keyed_and_bound_to_its_challenge() -> None:
    h = verification.code_hash(b"key", b"challenge-1", "123456")
    assert h != verification.code_hash(b"key", b"challenge-2", "123456")
    assert h != verification.code_hash(b"other", b"challenge-1", "123456")
    assert h == verification.code_hash(b"key", b"challenge-1", "123456") and b"123456" not in h


def _signed(msg_id: str = "msg_1", ts: int = 1_000_000, body: bytes = BODY) -> tuple[str, str, str]:
    return msg_id, str(ts), webhooks.standard_signature(SECRET, msg_id, ts, body)


def test_a_callback_signed_within_the_tolerance_is_accepted() -> None:
    verification.verify_callback(SECRET, *_signed(), BODY, now_s=1_000_000 + 300, tolerance_s=300)
    msg_id, ts, sig = _signed()
    # During a rotation several signatures come; one that matches is enough.
    verification.verify_callback(SECRET, msg_id, ts, "v1,AAAA " + sig, BODY, now_s=1_000_000, tolerance_s=300)


@pytest.mark.parametrize(("change", "code"), [
    ({"now_s": 1_000_301}, "timestamp_out_of_tolerance"),
    ({"now_s": 999_699}, "timestamp_out_of_tolerance"),
    ({"body": BODY + b" "}, "signature_invalid"),
    ({"msg_id": "msg_2"}, "signature_invalid"),
    ({"signature": "v1,bm90IGl0"}, "signature_invalid"),
    ({"signature": ""}, "signature_missing"),
    ({"msg_id": None}, "signature_missing"),
    ({"timestamp": "12a"}, "timestamp_invalid"),
])
def test_a_callback_is_refused_with_a_stable_code(change: dict[str, object], code: str) -> None:
    msg_id, ts, sig = _signed()
    args: dict[str, object] = {"msg_id": msg_id, "timestamp": ts, "signature": sig, "body": BODY,
                               "now_s": 1_000_000, "tolerance_s": 300}
    args.update(change)
    with pytest.raises(verification.CallbackRefused) as refused:
        verification.verify_callback(SECRET, args["msg_id"], args["timestamp"], args["signature"],  # type: ignore[arg-type]
                                     args["body"], args["now_s"], args["tolerance_s"])  # type: ignore[arg-type]
    assert refused.value.code == code


def test_retry_waits_are_full_jitter_and_capped() -> None:
    assert verification.retry_delay_s(1, 1.0, 30.0, 1.0) == 1.0
    assert verification.retry_delay_s(3, 1.0, 30.0, 1.0) == 4.0
    assert verification.retry_delay_s(10, 1.0, 30.0, 1.0) == 30.0
    assert verification.retry_delay_s(10, 1.0, 30.0, 0.0) == 0.0
    assert verification.retry_delay_s(10_000, 1.0, 30.0, 0.5) == 15.0


def test_the_text_tells_the_code_and_its_lifetime() -> None:
    assert verification.sms_text("123456", 300) == (
        "Your wallet code is 123456. It expires in 5 min. Never share it with anyone.")

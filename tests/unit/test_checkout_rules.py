"""Pure rules of the hosted checkout: the client secret, redirect URLs, language, payer status, amounts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from gateway.domain import checkout
from gateway.domain.money import Money
from gateway.errors import InvalidRequest

KEY = "a-server-key-of-at-least-16-chars"


def test_the_client_secret_depends_on_key_and_payment_and_is_checked_exactly() -> None:
    pid = uuid.uuid4()
    secret = checkout.client_secret(KEY, pid)
    assert secret.startswith("cs_") and len(secret) == 35 and pid.hex not in secret
    assert secret == checkout.client_secret(KEY, pid)
    assert secret != checkout.client_secret(KEY + "x", pid)
    assert secret != checkout.client_secret(KEY, uuid.uuid4())
    assert checkout.secret_matches(KEY, pid, secret)
    assert not checkout.secret_matches(KEY, pid, secret[:-1])
    assert not checkout.secret_matches(KEY, pid, "")
    url = checkout.checkout_url("https://pay.example/", KEY, pid, f"pay_{pid.hex}")
    assert url == f"https://pay.example/checkout/pay_{pid.hex}?secret={secret}"


def test_live_mode_takes_https_only() -> None:
    assert checkout.redirect_url("http://127.0.0.1:8000/done", "return_url", live=False)
    with pytest.raises(InvalidRequest) as refused:
        checkout.redirect_url("http://shop.example/done", "return_url", live=True)
    assert (refused.value.param, refused.value.code) == ("return_url", "invalid_url_scheme")
    assert checkout.redirect_url("https://shop.example/done", "return_url", live=True)
    assert checkout.redirect_url(None, "cancel_url", live=True) is None
    with pytest.raises(InvalidRequest, match="port|valid"):
        checkout.redirect_url("https://shop.example:99999/", "return_url", live=False)


def test_the_payment_id_joins_the_return_url_keeping_the_shops_query_and_fragment() -> None:
    assert checkout.return_with_payment("https://s.example/done", "pay_1") == "https://s.example/done?payment=pay_1"
    assert checkout.return_with_payment("https://s.example/d?o=4&payment=x#top", "pay_1") == (
        "https://s.example/d?o=4&payment=pay_1#top")


@pytest.mark.parametrize(("chosen", "header", "code", "tag"), [
    (None, None, "en", "en"),
    (None, "zh-CN,zh;q=0.9,en;q=0.8", "zh", "zh-CN"),
    (None, "en-GB,en;q=0.9,zh;q=0.8", "en", "en"),
    (None, "fr-FR,zh-TW;q=0.5", "zh", "zh-CN"),
    (None, "de, fr;q=0.5", "en", "en"),
    (None, "zh;q=0, en;q=0.1", "en", "en"),
    (None, "zh;q=bogus, en", "en", "en"),
    ("en", "zh-CN", "en", "en"),
    ("zh", None, "zh", "zh-CN"),
    ("xx", "zh-CN", "zh", "zh-CN"),
])
def test_language_from_the_switch_then_accept_language(chosen: str | None, header: str | None, code: str,
                                                       tag: str) -> None:
    assert checkout.pick_language(chosen, header) == checkout.Language(code, tag)


def test_an_open_payment_past_its_expiry_is_expired_to_the_payer() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert checkout.payer_status("requires_payment_method", now - timedelta(seconds=1), now) == "expired"
    assert checkout.payer_status("requires_payment_method", now + timedelta(seconds=1), now) == (
        "requires_payment_method")
    assert checkout.payer_status("succeeded", now - timedelta(days=1), now) == "succeeded"


@pytest.mark.parametrize(("minor", "code", "text"), [(1200, "JPY", "1200"), (3800, "CNY", "38.00"),
                                                     (1250, "KWD", "1.250")])
def test_amounts_in_the_currencys_decimals(minor: int, code: str, text: str) -> None:
    assert Money.of(minor, code).format() == text

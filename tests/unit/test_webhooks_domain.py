"""Webhook signing, backoff and URL policy: pure, checked against the libraries merchants use."""

from __future__ import annotations

import ipaddress
import json
import time

import pytest
import standardwebhooks
import stripe

from gateway.domain import webhooks as wh

SECRET = wh.make_secret(bytes(range(32)))
BODY = json.dumps({"id": "evt_1", "object": "event", "type": "payment.succeeded"}).encode()


def test_a_secret_is_whsec_and_base64_of_its_key() -> None:
    assert SECRET.startswith("whsec_")
    assert wh.secret_key(SECRET) == bytes(range(32))
    with pytest.raises(ValueError):
        wh.make_secret(b"short")


def test_standard_webhooks_library_verifies_the_headers() -> None:
    now = int(time.time())
    headers = wh.signed_headers("evt_1", now, BODY, [SECRET])
    assert standardwebhooks.Webhook(SECRET).verify(BODY, headers)["type"] == "payment.succeeded"


def test_stripe_library_verifies_the_wallet_signature() -> None:
    now = int(time.time())
    headers = wh.signed_headers("evt_1", now, BODY, [SECRET])
    event = stripe.Webhook.construct_event(BODY.decode(), headers["Wallet-Signature"], SECRET)
    assert event["type"] == "payment.succeeded"


def test_during_a_rotation_both_secrets_verify_with_both_libraries() -> None:
    old, new = SECRET, wh.make_secret(bytes(range(100, 132)))
    now = int(time.time())
    headers = wh.signed_headers("evt_1", now, BODY, [new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        standardwebhooks.Webhook(secret).verify(BODY, headers)
        stripe.Webhook.construct_event(BODY.decode(), headers["Wallet-Signature"], secret)
    other = wh.make_secret(bytes(range(50, 82)))
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(other).verify(BODY, headers)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(BODY.decode(), headers["Wallet-Signature"], other)


def test_a_changed_body_does_not_verify() -> None:
    headers = wh.signed_headers("evt_1", int(time.time()), BODY, [SECRET])
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(BODY + b" ", headers)


def test_full_jitter_backoff_grows_to_its_cap_and_gives_up_after_the_window() -> None:
    backoff = wh.Backoff(base_s=5, cap_s=3600, window_s=3 * 86400)
    assert backoff.delay_s(1, 0.999) < 5
    assert backoff.delay_s(3, 0.5) == pytest.approx(10)
    assert backoff.delay_s(40, 0.999) < 3600
    assert backoff.delay_s(5, 0.0) == 0
    assert not backoff.gives_up(3 * 86400 - 1)
    assert backoff.gives_up(3 * 86400)
    with pytest.raises(ValueError):
        wh.Backoff(base_s=10, cap_s=5, window_s=1)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "100.64.0.1",
    "::1", "fc00::1", "fd12::1", "fe80::1", "::", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "224.0.0.1",
])
def test_non_public_addresses_are_refused_in_live_mode(address: str) -> None:
    assert not wh.address_allowed(ipaddress.ip_address(address), live=True)


def test_public_addresses_pass_and_test_mode_adds_loopback() -> None:
    assert wh.address_allowed(ipaddress.ip_address("93.184.216.34"), live=True)
    assert wh.address_allowed(ipaddress.ip_address("2606:4700::1111"), live=True)
    assert wh.address_allowed(ipaddress.ip_address("127.0.0.1"), live=False)
    assert wh.address_allowed(ipaddress.ip_address("::1"), live=False)
    assert not wh.address_allowed(ipaddress.ip_address("169.254.169.254"), live=False)


@pytest.mark.parametrize("url", [
    "http://shop.example/hook", "https://127.0.0.1/hook", "https://[::1]/hook", "https://169.254.169.254/latest",
    "https://10.0.0.1/x", "https://localhost/x", "https://user:pw@shop.example/x", "ftp://shop.example/x",
    "https:///nohost", "https://[fe80::1]/x",
])
def test_live_mode_refuses_these_urls(url: str) -> None:
    with pytest.raises(wh.UrlRefused):
        wh.check_url(url, live=True)


def test_live_mode_takes_https_names_and_test_mode_takes_http_loopback() -> None:
    assert wh.check_url("https://shop.example/hook", live=True) == wh.Target("https", "shop.example", 443)
    assert wh.check_url("http://127.0.0.1:9000/hook", live=False).port == 9000
    with pytest.raises(wh.UrlRefused):
        wh.check_url("http://169.254.169.254/", live=False)

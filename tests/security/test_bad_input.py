"""Bad input gets a clear error and changes nothing.

Every case sends one malformed or out-of-range request and checks the error contract
(api-conventions.md, gateway/errors.py): the HTTP status, the error ``type``, a stable ``code``,
the offending ``param``, and a request id equal to the ``Request-Id`` header. Every case then
checks that nothing changed: every table's rows and what each tenant sees through the API.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.security.scene import (
    ANY,
    Case,
    Scene,
    State,
    assert_error,
    case,
    check_error_shape,
    raw_request,
    refused_and_nothing_changed,
    send,
)

BODY_MAX_BYTES = make_settings().server.body_max_bytes
INVALID = "invalid_request_error"
PAY = "/v1/payments"
TOP_UP = "/v1/wallet/top_ups"
OK_PAYMENT = {"amount": 100, "currency": "CNY"}
NESTING_DEPTH = 20_000  # deeper than any decoder's recursion limit, still well under the body limit


def top_up(**fields: Any) -> dict[str, Any]:
    return {"bank_account": "{h_bank}", "amount": 500, "currency": "CNY", **fields}


def payment(**fields: Any) -> dict[str, Any]:
    return {**OK_PAYMENT, **fields}


def invalid_json(name: str, path: str, body: Any, who: str = "a") -> Any:
    return case(name, who, "POST", path, body, code="invalid_json")


def not_found(name: str, who: str, method: str, path: str, body: Any = None, param: Any = "id") -> Any:
    return case(name, who, method, path, body, status=404, code="resource_missing", param=param)


def wrong_method(name: str, who: str, method: str, path: str) -> Any:
    return case(name, who, method, path, status=405, code="method_not_allowed")


def unknown_endpoint(name: str, who: str, method: str, path: str) -> Any:
    return case(name, who, method, path, status=404, code="unknown_endpoint")


def nul_text(name: str, who: str, path: str, body: Any, param: str, status: Any = 400) -> Any:
    """PostgreSQL text cannot hold U+0000: such a string must be refused as input, not crash the insert."""
    return case(name, who, "POST", path, body, status=status, code=ANY, param=param if status == 400 else ANY,
                type_=ANY if status != 400 else "invalid_request_error")


CASES = [
    # Malformed JSON.
    invalid_json("json-truncated", PAY, b'{"amount": 100,'),
    invalid_json("json-single-quotes", PAY, b"{'amount': 100, 'currency': 'CNY'}"),
    invalid_json("json-trailing-garbage", PAY, b'{"amount": 100, "currency": "CNY"} x'),
    invalid_json("json-nan", PAY, b'{"amount": NaN, "currency": "CNY"}'),
    invalid_json("json-not-utf8", PAY, b'{"amount": 100, "currency": "\xff\xfe\xfd"}'),
    invalid_json("json-nested-too-deep", PAY, b'{"amount": ' + b"[" * NESTING_DEPTH + b"]" * NESTING_DEPTH + b"}"),
    invalid_json("json-truncated-top-up", TOP_UP, b'{"bank_account":', who="h"),
    # JSON that is not an object.
    invalid_json("json-array", PAY, b"[]"),
    invalid_json("json-string", PAY, b'"pay me"'),
    invalid_json("json-number", PAY, b"100"),
    invalid_json("json-null", PAY, b"null"),
    invalid_json("json-true", PAY, b"true"),
    invalid_json("json-array-top-up", TOP_UP, b'[{"amount": 1}]', who="h"),
    invalid_json("json-array-capture", "/v1/payments/{a_held}/capture", b"[]"),
    # Wrong types.
    case("amount-string", "a", "POST", PAY, payment(amount="100"), param="amount"),
    case("amount-bool", "a", "POST", PAY, payment(amount=True), param="amount"),
    case("amount-null", "a", "POST", PAY, payment(amount=None), param="amount"),
    case("amount-list", "a", "POST", PAY, payment(amount=[100]), param="amount"),
    case("currency-number", "a", "POST", PAY, payment(currency=156), param="currency"),
    case("currency-too-long", "a", "POST", PAY, payment(currency="CNYY"), param="currency"),
    case("currency-empty", "a", "POST", PAY, payment(currency=""), param="currency"),
    case("capture-method-unknown", "a", "POST", PAY, payment(capture_method="sometimes"), param="capture_method"),
    case("expires-in-string", "a", "POST", PAY, payment(expires_in="900"), param="expires_in"),
    case("top-up-amount-string", "h", "POST", TOP_UP, top_up(amount="5"), param="amount"),
    case("top-up-bank-number", "h", "POST", TOP_UP, top_up(bank_account=7), param="bank_account"),
    case("capture-amount-string", "a", "POST", "/v1/payments/{a_held}/capture", {"amount_to_capture": "all"},
         param="amount_to_capture"),
    case("refund-amount-object", "a", "POST", "/v1/payments/{a_paid}/refunds", {"amount": {}}, param="amount"),
    # Required fields missing: the error names the field.
    case("amount-missing", "a", "POST", PAY, {"currency": "CNY"}, param="amount"),
    case("body-empty", "a", "POST", PAY, b"", param=ANY),
    case("top-up-bank-missing", "h", "POST", TOP_UP, {"amount": 500, "currency": "CNY"}, param="bank_account"),
    # Unknown fields: param names the field.
    case("unknown-field", "a", "POST", PAY, payment(amont=1), code="unknown_parameter", param="amont"),
    case("unknown-field-object", "a", "POST", PAY, payment(extra_data={"k": "v"}), code="unknown_parameter",
         param="extra_data"),
    # Metadata: Stripe's limits, the refusal naming the pair.
    case("metadata-value-long", "a", "POST", PAY, payment(metadata={"order": "v" * 501}),
         code="metadata_value_too_long", param="metadata[order]"),
    case("metadata-value-number", "a", "POST", PAY, payment(metadata={"order": 7}),
         code="metadata_value_not_string", param="metadata[order]"),
    case("metadata-too-many", "a", "POST", PAY, payment(metadata={f"k{i}": "v" for i in range(51)}),
         code="metadata_too_many_keys", param="metadata"),
    case("metadata-search-key-long", "a", "GET", "/v1/payments?metadata[" + "k" * 41 + "]=1",
         code="metadata_key_invalid", param="metadata[" + "k" * 41 + "]"),
    case("unknown-field-top-up", "h", "POST", TOP_UP, top_up(holder="wh_x"), code="unknown_parameter", param="holder"),
    case("unknown-field-pay", "g", "POST", "/v1/wallet/payments/{b_open}/pay", {"amount": 1},
         code="unknown_parameter", param="amount"),
    case("unknown-field-capture", "a", "POST", "/v1/payments/{a_held}/capture", {"amount": 1},
         code="unknown_parameter", param="amount"),
    case("unknown-field-revoke", "a", "POST", "/v1/api_keys/{a_sk_key}/revoke", {"now": True}, code="unknown_parameter",
         param="now"),
    case("unknown-query-param", "a", "GET", "/v1/payments?color=red", code="unknown_parameter", param="color"),
    # created[...] past the last instant a timestamp holds (year 9999): refused, not an overflow inside.
    case("created-gte-huge", "a", "GET", "/v1/payments?created[gte]=99999999999999999", param="created[gte]"),
    case("created-lt-year-10000", "a", "GET", "/v1/refunds?created[lt]=253402300800", param="created[lt]"),
    case("events-created-huge", "a", "GET", "/v1/events?created[gte]=99999999999999999", param="created[gte]"),
    # Oversized bodies are refused before parsing.
    case("body-too-large", "a", "POST", PAY, payment(description="a" * (BODY_MAX_BYTES + 1)), status=413,
         code="body_too_large"),
    case("body-too-large-top-up", "h", "POST", TOP_UP, top_up(note="a" * (BODY_MAX_BYTES + 1)), status=413,
         code="body_too_large"),
    # Amounts: positive integers of minor units, bounded.
    case("amount-zero", "a", "POST", PAY, payment(amount=0), code="invalid_amount", param="amount"),
    case("amount-negative", "a", "POST", PAY, payment(amount=-1), code="invalid_amount", param="amount"),
    case("amount-fraction", "a", "POST", PAY, payment(amount=10.5), code="amount_too_precise", param="amount"),
    case("amount-cent-fraction", "a", "POST", PAY, payment(amount=0.01), code="amount_too_precise", param="amount"),
    case("amount-integral-float", "a", "POST", PAY, payment(amount=100.0), code="invalid_amount", param="amount"),
    case("amount-exponent", "a", "POST", PAY, b'{"amount": 1e20, "currency": "CNY"}', code="invalid_amount",
         param="amount"),
    case("amount-above-max", "a", "POST", PAY, payment(amount=10**15 + 1), code="amount_too_large", param="amount"),
    case("amount-beyond-int64", "a", "POST", PAY, payment(amount=10**40), code="amount_too_large", param="amount"),
    case("top-up-zero", "h", "POST", TOP_UP, top_up(amount=0), code="invalid_amount", param="amount"),
    case("top-up-negative", "h", "POST", TOP_UP, top_up(amount=-500), code="invalid_amount", param="amount"),
    case("top-up-fraction", "h", "POST", TOP_UP, top_up(amount=10.5), code="amount_too_precise", param="amount"),
    case("top-up-above-max", "h", "POST", TOP_UP, top_up(amount=10**15 + 1), code="amount_too_large", param="amount"),
    case("capture-zero", "a", "POST", "/v1/payments/{a_held}/capture", {"amount_to_capture": 0},
         code="invalid_amount", param="amount_to_capture"),
    case("capture-fraction", "a", "POST", "/v1/payments/{a_held}/capture", {"amount_to_capture": 10.5},
         code="amount_too_precise", param="amount_to_capture"),
    case("refund-negative", "a", "POST", "/v1/payments/{a_paid}/refunds", {"amount": -1}, code="invalid_amount",
         param="amount"),
    case("refund-fraction", "a", "POST", "/v1/payments/{a_paid}/refunds", {"amount": 0.5},
         code="amount_too_precise", param="amount"),
    # Currencies: ISO 4217 codes with a minor unit.
    case("currency-unknown", "a", "POST", PAY, payment(currency="XYZ"), code="invalid_currency", param="currency"),
    case("currency-gold", "a", "POST", PAY, payment(currency="XAU"), code="invalid_currency", param="currency"),
    case("currency-digit", "a", "POST", PAY, payment(currency="C1Y"), code="invalid_currency", param="currency"),
    case("top-up-currency-unknown", "h", "POST", TOP_UP, top_up(currency="XYZ"), code="invalid_currency",
         param="currency"),
    case("history-currency-unknown", "h", "GET", "/v1/wallet/transactions?currency=XYZ", code="invalid_currency",
         param="currency"),
    # Cursors and limits.
    case("limit-zero", "a", "GET", "/v1/payments?limit=0", param="limit"),
    case("limit-101", "a", "GET", "/v1/payments?limit=101", param="limit"),
    case("limit-negative", "a", "GET", "/v1/payments?limit=-1", param="limit"),
    case("limit-abc", "a", "GET", "/v1/payments?limit=abc", param="limit"),
    case("cursor-garbage", "a", "GET", "/v1/payments?starting_after=garbage", code="invalid_cursor",
         param="starting_after"),
    case("cursor-garbage-before", "a", "GET", "/v1/payments?ending_before=pay_zz", code="invalid_cursor",
         param="ending_before"),
    case("cursor-other-merchant", "a", "GET", "/v1/payments?starting_after={b_paid}", code="invalid_cursor",
         param="starting_after"),
    case("cursor-other-merchant-before", "a", "GET", "/v1/payments?ending_before={b_paid}", code="invalid_cursor",
         param="ending_before"),
    case("cursor-too-long", "a", "GET", "/v1/payments?starting_after=" + "p" * 65, param="starting_after"),
    case("events-cursor-garbage", "a", "GET", "/v1/events?starting_after=garbage", code="invalid_cursor",
         param="starting_after"),
    case("events-limit-101", "a", "GET", "/v1/events?limit=101", param="limit"),
    case("history-cursor-garbage", "h", "GET", "/v1/wallet/transactions?starting_after=txn_abc",
         code="invalid_cursor", param="starting_after"),
    case("history-limit-zero", "h", "GET", "/v1/wallet/transactions?limit=0", param="limit"),
    # Repeated query parameters are ambiguous: refused, naming the parameter.
    case("query-repeated", "a", "GET", "/v1/payments?limit=1&limit=2", param="limit"),
    case("query-repeated-same", "a", "GET", "/v1/events?limit=5&limit=5", param="limit"),
    # Bad ids in paths and bodies are "not found".
    not_found("id-garbage", "a", "GET", "/v1/payments/garbage"),
    not_found("id-other-type", "a", "GET", "/v1/payments/re_{a_paid_hex}"),
    not_found("id-merchant-prefix", "a", "GET", "/v1/payments/mer_{a_paid_hex}"),
    not_found("id-unknown-uuid", "a", "GET", f"/v1/payments/pay_{uuid.uuid4().hex}"),
    not_found("id-nul", "a", "GET", "/v1/payments/%00"),
    not_found("capture-other-type", "a", "POST", "/v1/payments/re_{a_paid_hex}/capture", {}),
    not_found("cancel-garbage", "a", "POST", "/v1/payments/garbage/cancel", {}),
    not_found("refund-garbage", "a", "POST", "/v1/payments/garbage/refunds", {}),
    not_found("refund-list-garbage", "a", "GET", "/v1/payments/garbage/refunds"),
    not_found("pay-garbage", "h", "POST", "/v1/wallet/payments/garbage/pay", {}),
    not_found("pay-unknown-uuid", "h", "POST", f"/v1/wallet/payments/pay_{uuid.uuid4().hex}/pay", {}),
    not_found("merchant-garbage", "a", "GET", "/v1/merchants/garbage"),
    not_found("revoke-garbage", "a", "POST", "/v1/api_keys/garbage/revoke", {}),
    not_found("events-payment-garbage", "a", "GET", "/v1/events?payment=garbage", param="payment"),
    not_found("store-garbage", "a", "POST", PAY, payment(store="sto_garbage"), param="store"),
    not_found("store-other-merchant", "a", "POST", PAY, payment(store="{b_store}"), param="store"),
    not_found("top-up-bank-garbage", "h", "POST", TOP_UP, top_up(bank_account="ba_garbage"), param="bank_account"),
    not_found("top-up-bank-other-type", "h", "POST", TOP_UP, top_up(bank_account="wh_{h_bank_hex}"),
              param="bank_account"),
    not_found("top-up-bank-unknown-new-currency", "h", "POST", TOP_UP,
              top_up(bank_account=f"ba_{uuid.uuid4().hex}", currency="USD"), param="bank_account"),
    # Idempotency-Key: 1-255 printable characters.
    case("idempotency-key-256", "a", "POST", PAY, OK_PAYMENT, code="invalid_idempotency_key",
         param="Idempotency-Key", headers={"Idempotency-Key": "k" * 256}),
    case("idempotency-key-empty", "a", "POST", PAY, OK_PAYMENT, code="invalid_idempotency_key",
         param="Idempotency-Key", headers={"Idempotency-Key": ""}),
    case("idempotency-key-tab", "a", "POST", PAY, OK_PAYMENT, code="invalid_idempotency_key",
         param="Idempotency-Key", headers={"Idempotency-Key": "a\tb"}),
    case("idempotency-key-256-top-up", "h", "POST", TOP_UP, top_up(), code="invalid_idempotency_key",
         param="Idempotency-Key", headers={"Idempotency-Key": "k" * 256}),
    case("idempotency-key-256-capture", "a", "POST", "/v1/payments/{a_held}/capture", {},
         code="invalid_idempotency_key", param="Idempotency-Key", headers={"Idempotency-Key": "k" * 256}),
    # Unknown endpoints and wrong methods answer in JSON.
    unknown_endpoint("endpoint-v2", "a", "GET", "/v2/payments"),
    unknown_endpoint("endpoint-singular", "a", "POST", "/v1/payment"),
    unknown_endpoint("endpoint-root", "anon", "GET", "/"),
    unknown_endpoint("endpoint-subresource", "a", "GET", "/v1/payments/{a_paid}/nothing"),
    wrong_method("method-delete-list", "a", "DELETE", PAY),
    wrong_method("method-put-payment", "a", "PUT", "/v1/payments/{a_paid}"),
    wrong_method("method-get-capture", "a", "GET", "/v1/payments/{a_held}/capture"),
    wrong_method("method-get-top-ups", "h", "GET", TOP_UP),
    wrong_method("method-patch-merchants", "ops", "PATCH", "/v1/merchants"),
    # Text a client can send but PostgreSQL cannot store.
    nul_text("nul-description", "a", PAY, payment(description="two\x00bowls"), "description"),
    nul_text("nul-merchant-reference", "a", PAY, payment(merchant_reference="\x00"), "merchant_reference"),
    nul_text("nul-refund-reason", "a", "/v1/payments/{a_paid}/refunds", {"amount": 1, "reason": "\x00"}, "reason"),
    nul_text("nul-bank-name", "h", "/v1/wallet/bank_accounts",
             {"bank_name": "ICBC\x00", "account_number": "6222020200199887766"}, "bank_name"),
    nul_text("nul-merchant-name", "ops", "/v1/merchants",
             {"name": "\x00", "mcc": "5812", "country": "CN", "city": "Beijing"}, "name"),
    nul_text("nul-wallet-login", "anon", "/v1/wallet/sessions", {"phone": "+86\x00", "password": "s3cret-pass"},
             "phone", status=(400, 401)),
    nul_text("nul-operator-login", "anon", "/v1/operator/sessions",
             {"email": "ops\x00@example.com", "password": "correct horse battery"}, "email", status=(400, 401)),
]


@pytest.mark.parametrize("c", CASES)
async def test_bad_input_is_refused_clearly_and_changes_nothing(scene: Scene, c: Case) -> None:
    await refused_and_nothing_changed(scene, c)


@pytest.mark.parametrize("authorization", [
    pytest.param(b"Bearer sk_test_\xff\xfe", id="api-key-shaped"),
    pytest.param(b"Bearer eyJ\xff.e30.sig", id="jwt-shaped"),
    pytest.param(b"Bearer \xff", id="lone-byte"),
])
async def test_undecodable_authorization_header_is_401(scene: Scene, authorization: bytes) -> None:
    """Header bytes that are not UTF-8 are a bad credential, not a crash."""
    before = await State.take(scene)
    head = b"GET /v1/payments HTTP/1.1\r\nHost: gateway\r\nAuthorization: " + authorization
    resp = await raw_request(scene.world, head)
    assert resp.status == 401, resp
    error = check_error_shape(resp.status, resp.headers, resp.body)
    assert error["type"] == "authentication_error", error
    before.assert_same(await State.take(scene))


async def test_refused_request_does_not_burn_its_idempotency_key(scene: Scene) -> None:
    """A request that fails validation stores nothing: the same key then works for a valid request."""
    w, headers = scene.world, {**scene.headers("a"), "Idempotency-Key": f"order-{uuid.uuid4()}"}
    for bad in (payment(amount=-5), payment(amount="5"), payment(colour="red"), payment(currency="XYZ")):
        resp, body = await send(w, "POST", PAY, headers, bad)
        assert_error(resp, body, 400, INVALID, ANY, ANY)
    resp, body = await send(w, "POST", PAY, headers, OK_PAYMENT)
    assert resp.status == 201, body
    assert "Idempotent-Replayed" not in resp.headers


async def test_given_request_id_is_echoed_and_a_bad_one_replaced(scene: Scene) -> None:
    w = scene.world
    resp, body = await send(w, "GET", "/v1/payments/garbage", {**scene.headers("a"), "X-Request-Id": "trace-42.a_b"})
    assert assert_error(resp, body, 404, INVALID, "resource_missing", "id")["request_id"] == "trace-42.a_b"
    resp, body = await send(w, "GET", "/v1/payments/garbage", {**scene.headers("a"), "X-Request-Id": "bad id;" * 20})
    rid = assert_error(resp, body, 404, INVALID, "resource_missing", "id")["request_id"]
    assert rid.startswith("req_") and rid == resp.headers["Request-Id"]


async def test_edge_values_that_are_accepted(scene: Scene) -> None:
    """Lower-case currency codes are normalised (money.currency upper-cases them); the bounds are inclusive."""
    w, headers = scene.world, scene.headers("a")
    resp, body = await send(w, "POST", PAY, headers, payment(currency="cny"))
    assert resp.status == 201 and body["currency"] == "CNY", body
    resp, body = await send(w, "POST", PAY, headers, payment(amount=10**15))
    assert resp.status == 201 and body["amount"] == 10**15, body
    resp, body = await send(w, "POST", PAY, {**headers, "Idempotency-Key": "k" * 255}, OK_PAYMENT)
    assert resp.status == 201, body
    resp, body = await send(w, "GET", "/v1/payments?limit=100", headers)
    assert resp.status == 200 and len(body["data"]) == 5, body
    resp, body = await send(w, "GET", "/v1/wallet/transactions?currency=cny&limit=1", scene.headers("h"))
    assert resp.status == 200 and body["data"][0]["currency"] == "CNY", body

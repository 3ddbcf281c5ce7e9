"""Random JSON against the two money-moving POSTs: never a 5xx, and every error has the documented shape.

Bodies are mostly objects whose keys are the endpoint's own fields (so values reach the use case,
not only the parser) with values that are sometimes plausible and sometimes any JSON at all,
plus the odd unknown key; the rest are arbitrary JSON values. The examples share one scene: what
succeeds (a payment, a top-up) stays, and the ledger invariants are checked after the test.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.scene import Scene, check_error_shape, fill_ids, send

EXAMPLES_MAX = 50
INT64_MAX = 2**63 - 1

# Strings that have broken parsers, databases and terminals before, mixed into the random ones.
nasty_texts = st.sampled_from([
    "", " ", "\x00", "a\x00b", "\u202e", "\ufeff", "'; DROP TABLE payments; --", "%s%n%x", "\\", "\U0001d518",
    "\r\n", "x" * 64, "x" * 65, "x" * 201,
])
texts = st.one_of(nasty_texts, st.text(max_size=40))
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), texts,
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
good_amounts = st.integers(min_value=1, max_value=1_000_000)
good_currencies = st.sampled_from(["CNY", "cny", "USD", "JPY", "KWD"])
wild_amounts = st.one_of(
    st.integers(min_value=-INT64_MAX, max_value=2**80), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 10**15, 10**15 + 1, 10.5, 100.0, "100"]), json_values,
)
wild_currencies = st.one_of(st.sampled_from(["XYZ", "XAU", "", "CN\x00", "CNYY"]), st.text(max_size=4), json_values)
wild_texts = st.one_of(texts, json_values)


def bodies(
    required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]],
    wild: dict[str, st.SearchStrategy[Any]],
) -> st.SearchStrategy[Any]:
    """Plausible bodies; plausible bodies with one field made wild or one unknown key; any JSON at all."""
    plausible = st.fixed_dictionaries(required, optional=optional)
    one_wild = st.one_of([
        st.builds(lambda body, value, name=name: {**body, name: value}, plausible, values)
        for name, values in wild.items()
    ])
    one_dropped = st.builds(lambda body, name: {k: v for k, v in body.items() if k != name}, plausible,
                            st.sampled_from(sorted(required)))
    unknown_names = st.text(min_size=1, max_size=12).filter(lambda n: n not in required | optional)
    one_unknown = st.builds(lambda body, name, value: {**body, name: value}, plausible, unknown_names, json_values)
    return st.one_of(plausible, one_wild, one_dropped, one_unknown, json_values)


payment_bodies = bodies(
    required={"amount": good_amounts, "currency": good_currencies},
    optional={
        "capture_method": st.sampled_from(["automatic", "manual"]), "merchant_reference": texts,
        "description": texts, "expires_in": st.integers(min_value=60, max_value=86_400),
        "store": st.just("{a_store}"),
    },
    wild={
        "amount": wild_amounts, "currency": wild_currencies, "capture_method": wild_texts,
        "merchant_reference": wild_texts, "description": wild_texts,
        "expires_in": st.one_of(st.integers(min_value=-(2**64), max_value=2**64), json_values),
        "store": st.one_of(st.sampled_from(["{b_store}", "sto_garbage"]), wild_texts),
    },
)
top_up_bodies = bodies(
    required={"bank_account": st.just("{h_bank}"), "amount": good_amounts, "currency": good_currencies},
    optional={},
    wild={
        "bank_account": st.one_of(st.sampled_from(["{g_bank}", "ba_garbage"]), wild_texts),
        "amount": wild_amounts, "currency": wild_currencies,
    },
)


async def _post_and_check(scene: Scene, who: str, path: str, body: Any) -> None:
    raw = json.dumps(fill_ids(body, scene.ids()), ensure_ascii=False).encode()
    resp, answer = await send(scene.world, "POST", path, scene.headers(who), raw)
    assert resp.status < 500, (resp.status, raw[:300], answer)
    if resp.status >= 400:
        check_error_shape(resp.status, resp.headers, answer)
    else:
        assert resp.status == 201 and isinstance(answer, dict) and isinstance(answer.get("id"), str), answer


fuzz = settings(
    max_examples=EXAMPLES_MAX, deadline=None, database=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@fuzz
@given(body=payment_bodies)
async def test_create_payment_never_fails_on_the_server(scene: Scene, body: Any) -> None:
    await _post_and_check(scene, "a", "/v1/payments", body)


@fuzz
@given(body=top_up_bodies)
async def test_top_up_never_fails_on_the_server(scene: Scene, body: Any) -> None:
    await _post_and_check(scene, "h", "/v1/wallet/top_ups", body)

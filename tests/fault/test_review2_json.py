"""Review 2 (strict JSON of issue 8): client input that reaches a 500.

The body decoder moved from msgspec to ``json.loads`` (for duplicate keys). ``json.loads`` accepts
a lone UTF-16 surrogate escape (``"\\ud800"``) and returns a ``str`` that cannot be encoded as
UTF-8; msgspec (the fingerprint, the error renderer) and asyncpg then raise ``UnicodeEncodeError``
and the middleware answers 500. A client must never be able to cause a 500: such a body is a 400.
"""

from __future__ import annotations

import pytest

from tests.integration.world import World

_LONE = b'"\\ud800"'


@pytest.mark.parametrize("body", [
    b'{"amount": 100, "currency": "CNY", "description": ' + _LONE + b'}',
    b'{"amount": 100, "currency": "CNY", "merchant_reference": ' + _LONE + b'}',
    b'{"amount": 100, "currency": ' + _LONE + b'}',
    b'{' + _LONE + b': 1, "amount": 100, "currency": "CNY"}',
])
@pytest.mark.parametrize("key", [None, "surrogate-1"])
async def test_a_lone_surrogate_escape_is_a_400_not_a_500(world: World, body: bytes, key: str | None) -> None:
    """Attack: POST /v1/payments with a lone surrogate escape in a string or a key (with and without
    an Idempotency-Key). Expected: 400 invalid_json (or invalid_parameter), never 500."""
    m = await world.merchant()
    headers = {**m.headers, "Content-Type": "application/json"}
    if key:
        headers["Idempotency-Key"] = key
    resp = await world.client.post("/v1/payments", data=body, headers=headers)
    text = await resp.text()
    assert resp.status == 400, (resp.status, text)

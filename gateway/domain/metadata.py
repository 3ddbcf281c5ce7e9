"""Metadata: the merchant's own string key-value pairs on a payment or a refund (Stripe's limits).

At most ``KEYS_MAX`` keys; a key is 1-``KEY_LENGTH_MAX`` characters without square brackets (the
list query names a key as ``metadata[key]``); a value is a string of at most ``VALUE_LENGTH_MAX``
characters. On an update an empty string removes its key. A refusal names the pair:
``param="metadata[key]"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import InvalidRequest

KEYS_MAX = 50
KEY_LENGTH_MAX = 40
VALUE_LENGTH_MAX = 500
_PARAM_KEY_MAX = 100  # how much of a refused key the error repeats


def _param(key: str) -> str:
    return f"metadata[{key[:_PARAM_KEY_MAX]}]"


def _count(pairs: dict[str, str]) -> dict[str, str]:
    if len(pairs) > KEYS_MAX:
        raise InvalidRequest(f"at most {KEYS_MAX} metadata keys", code="metadata_too_many_keys", param="metadata")
    return pairs


def check(pairs: Mapping[str, Any]) -> dict[str, str]:
    """The pairs with a value (an empty string means no such key), or a refusal naming the first bad one."""
    for key, value in pairs.items():
        if not 1 <= len(key) <= KEY_LENGTH_MAX or "[" in key or "]" in key:
            raise InvalidRequest(f"a metadata key is 1-{KEY_LENGTH_MAX} characters without [ or ]",
                                 code="metadata_key_invalid", param=_param(key))
        if not isinstance(value, str):
            raise InvalidRequest("metadata values are strings", code="metadata_value_not_string", param=_param(key))
        if len(value) > VALUE_LENGTH_MAX:
            raise InvalidRequest(f"a metadata value is at most {VALUE_LENGTH_MAX} characters",
                                 code="metadata_value_too_long", param=_param(key))
    return _count({key: value for key, value in pairs.items() if value})


def merge(current: Mapping[str, str], changes: Mapping[str, Any]) -> dict[str, str]:
    """An update: each pair of ``changes`` sets its key, an empty value removes it; the rest stays."""
    check(changes)
    merged = {**current, **changes}
    return _count({key: value for key, value in merged.items() if value})

"""Metadata limits (Stripe's): 50 keys, 40-character keys, 500-character string values; "" unsets on update.
And the list filters' statuses."""

from __future__ import annotations

from typing import get_args

import pytest

from gateway.api import schema
from gateway.domain import metadata
from gateway.domain.payments import Status
from gateway.errors import InvalidRequest


def test_empty_values_are_no_key_and_the_limits_hold_exactly() -> None:
    assert metadata.check({"a": "1", "b": ""}) == {"a": "1"}
    exactly = {f"{i:02d}" + "k" * 38: "v" * 500 for i in range(50)}
    assert metadata.check(exactly) == exactly
    assert metadata.check({**exactly, "unset": ""}) == exactly


def test_an_update_sets_removes_and_counts_after_merging() -> None:
    current = {f"k{i}": "v" for i in range(50)}
    assert metadata.merge(current, {"k0": "", "new": "x"}) == {**{f"k{i}": "v" for i in range(1, 50)}, "new": "x"}
    with pytest.raises(InvalidRequest) as refused:
        metadata.merge(current, {"one_more": "x"})
    assert (refused.value.code, refused.value.param) == ("metadata_too_many_keys", "metadata")


@pytest.mark.parametrize(("pairs", "code", "param"), [
    ({"k" * 41: "v"}, "metadata_key_invalid", "metadata[" + "k" * 41 + "]"),
    ({"x" * 300: "v"}, "metadata_key_invalid", "metadata[" + "x" * 100 + "]"),  # the error repeats a bounded key
    ({"a]": "v"}, "metadata_key_invalid", "metadata[a]]"),
    ({"k": "v" * 501}, "metadata_value_too_long", "metadata[k]"),
    ({"k": None}, "metadata_value_not_string", "metadata[k]"),
    ({"k": True}, "metadata_value_not_string", "metadata[k]"),
])
def test_each_refusal_names_its_pair(pairs: dict[str, object], code: str, param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        metadata.check(pairs)
    assert (refused.value.code, refused.value.param, refused.value.status) == (code, param, 400)


def test_the_status_filter_knows_every_payment_status() -> None:
    assert set(get_args(schema.PaymentStatus)) == {status.value for status in Status}

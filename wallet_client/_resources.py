"""The API's resources as methods: one method per endpoint, arguments named as the API names them.

Invariants: an argument left ``None`` is not sent (the gateway applies its default, and a server
that does not know an optional field is never sent one the caller did not ask for); ids are
percent-encoded into paths, so an id can never reach another endpoint; every POST and DELETE
takes ``idempotency_key`` (generated when omitted, see ``_http``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

from wallet_client._http import JSONObject, QueryValue, Requester
from wallet_client._pagination import Page, iterate

CaptureMethod = Literal["automatic", "manual"]


def _path(template: str, *ids: str) -> str:
    for value in ids:
        if not isinstance(value, str) or not value:
            raise ValueError("an object id must be a non-empty string")
    return template.format(*(quote(value, safe="") for value in ids))


def _body(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def _unix_s(value: int | datetime | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    if value.tzinfo is None:
        raise ValueError("a datetime filter must be timezone-aware")
    return int(value.timestamp())


class _Resource:
    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    async def _page(self, path: str, params: dict[str, QueryValue]) -> Page:
        return Page.parse(await self._requester.request("GET", path, params=params))


class Payments(_Resource):
    """``/v1/payments``: create, retrieve, list, capture, cancel."""

    async def create(
        self,
        *,
        amount: int,
        currency: str,
        capture_method: CaptureMethod | None = None,
        merchant_reference: str | None = None,
        description: str | None = None,
        expires_in_s: int | None = None,
        store: str | None = None,
        return_url: str | None = None,
        cancel_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> JSONObject:
        """Create a payment of ``amount`` minor units (1050 = 10.50 CNY); returns the payment."""
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise TypeError("amount is an integer of minor units")
        body = _body(amount=amount, currency=currency, capture_method=capture_method,
                     merchant_reference=merchant_reference, description=description, expires_in=expires_in_s,
                     store=store, return_url=return_url, cancel_url=cancel_url)
        return await self._requester.request("POST", "/v1/payments", body=body, idempotency_key=idempotency_key)

    async def retrieve(self, payment_id: str) -> JSONObject:
        return await self._requester.request("GET", _path("/v1/payments/{}", payment_id))

    async def list(
        self,
        *,
        limit: int | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
        merchant_reference: str | None = None,
    ) -> Page:
        """One page of payments, newest first."""
        return await self._page("/v1/payments", {
            "limit": limit, "starting_after": starting_after, "ending_before": ending_before,
            "merchant_reference": merchant_reference,
        })

    def iterate(
        self,
        *,
        page_size: int = 100,
        starting_after: str | None = None,
        merchant_reference: str | None = None,
        max_items: int | None = None,
    ) -> AsyncIterator[JSONObject]:
        """Every payment, newest first, fetching pages of ``page_size`` as the loop goes."""
        async def fetch(cursor: str | None) -> Page:
            return await self.list(limit=page_size, starting_after=cursor, merchant_reference=merchant_reference)
        return iterate(fetch, starting_after, max_items)

    async def capture(
        self, payment_id: str, *, amount_to_capture: int | None = None, idempotency_key: str | None = None,
    ) -> JSONObject:
        """Capture an authorised (``capture_method="manual"``) payment, fully or ``amount_to_capture``."""
        return await self._requester.request("POST", _path("/v1/payments/{}/capture", payment_id),
                                             body=_body(amount_to_capture=amount_to_capture),
                                             idempotency_key=idempotency_key)

    async def cancel(
        self, payment_id: str, *, reason: str | None = None, idempotency_key: str | None = None,
    ) -> JSONObject:
        """Cancel an unpaid or uncaptured payment (an authorisation's hold is released)."""
        return await self._requester.request("POST", _path("/v1/payments/{}/cancel", payment_id),
                                             body=_body(reason=reason), idempotency_key=idempotency_key)


class Refunds(_Resource):
    """``/v1/payments/{id}/refunds``."""

    async def create(
        self, payment_id: str, *, amount: int | None = None, reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> JSONObject:
        """Refund a captured payment in full, or ``amount`` minor units of it."""
        return await self._requester.request("POST", _path("/v1/payments/{}/refunds", payment_id),
                                             body=_body(amount=amount, reason=reason),
                                             idempotency_key=idempotency_key)

    async def list(self, payment_id: str) -> Page:
        """The payment's refunds, newest first."""
        return await self._page(_path("/v1/payments/{}/refunds", payment_id), {})


class Events(_Resource):
    """``/v1/events``: what happened to the merchant's objects, newest first."""

    async def list(
        self,
        *,
        type: str | None = None,
        created_gte: int | datetime | None = None,
        created_lt: int | datetime | None = None,
        payment: str | None = None,
        limit: int | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> Page:
        """One page of events; ``created_gte``/``created_lt`` are Unix seconds or aware datetimes."""
        return await self._page("/v1/events", {
            "type": type, "created[gte]": _unix_s(created_gte), "created[lt]": _unix_s(created_lt),
            "payment": payment, "limit": limit, "starting_after": starting_after, "ending_before": ending_before,
        })

    def iterate(
        self,
        *,
        type: str | None = None,
        created_gte: int | datetime | None = None,
        created_lt: int | datetime | None = None,
        payment: str | None = None,
        page_size: int = 100,
        starting_after: str | None = None,
        max_items: int | None = None,
    ) -> AsyncIterator[JSONObject]:
        """Every event matching the filters, newest first."""
        async def fetch(cursor: str | None) -> Page:
            return await self.list(type=type, created_gte=created_gte, created_lt=created_lt, payment=payment,
                                   limit=page_size, starting_after=cursor)
        return iterate(fetch, starting_after, max_items)

    async def retrieve(self, event_id: str) -> JSONObject:
        return await self._requester.request("GET", _path("/v1/events/{}", event_id))

    async def redeliver(self, event_id: str, *, idempotency_key: str | None = None) -> JSONObject:
        """Deliver the event again to every endpoint it matches (a manual retry)."""
        return await self._requester.request("POST", _path("/v1/events/{}/redeliver", event_id), body={},
                                             idempotency_key=idempotency_key)


class WebhookEndpoints(_Resource):
    """``/v1/webhook_endpoints``: where the gateway delivers events, and how they fared."""

    async def create(
        self,
        *,
        url: str,
        enabled_events: Sequence[str] = ("*",),
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> JSONObject:
        """Create an endpoint; the answer's ``secret`` (``whsec_...``) is shown only here: store it."""
        body = _body(url=url, enabled_events=list(enabled_events), description=description)
        return await self._requester.request("POST", "/v1/webhook_endpoints", body=body,
                                             idempotency_key=idempotency_key)

    async def retrieve(self, endpoint_id: str) -> JSONObject:
        return await self._requester.request("GET", _path("/v1/webhook_endpoints/{}", endpoint_id))

    async def list(
        self, *, limit: int | None = None, starting_after: str | None = None, ending_before: str | None = None,
    ) -> Page:
        return await self._page("/v1/webhook_endpoints", {
            "limit": limit, "starting_after": starting_after, "ending_before": ending_before,
        })

    def iterate(
        self, *, page_size: int = 100, starting_after: str | None = None, max_items: int | None = None,
    ) -> AsyncIterator[JSONObject]:
        async def fetch(cursor: str | None) -> Page:
            return await self.list(limit=page_size, starting_after=cursor)
        return iterate(fetch, starting_after, max_items)

    async def update(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        enabled_events: Sequence[str] | None = None,
        description: str | None = None,
        disabled: bool | None = None,
        idempotency_key: str | None = None,
    ) -> JSONObject:
        """Change the fields given; ``disabled=True`` stops deliveries, ``False`` resumes them."""
        body = _body(url=url, enabled_events=None if enabled_events is None else list(enabled_events),
                     description=description, disabled=disabled)
        return await self._requester.request("POST", _path("/v1/webhook_endpoints/{}", endpoint_id), body=body,
                                             idempotency_key=idempotency_key)

    async def delete(self, endpoint_id: str, *, idempotency_key: str | None = None) -> JSONObject:
        return await self._requester.request("DELETE", _path("/v1/webhook_endpoints/{}", endpoint_id),
                                             idempotency_key=idempotency_key)

    async def rotate_secret(self, endpoint_id: str, *, idempotency_key: str | None = None) -> JSONObject:
        """A new signing secret (in the answer, once); the old one keeps signing during the overlap."""
        return await self._requester.request("POST", _path("/v1/webhook_endpoints/{}/rotate_secret", endpoint_id),
                                             body={}, idempotency_key=idempotency_key)

    async def deliveries(
        self, endpoint_id: str, *, limit: int | None = None, starting_after: str | None = None,
    ) -> Page:
        """One page of the endpoint's delivery attempts (time, status, latency, response excerpt), newest first."""
        return await self._page(_path("/v1/webhook_endpoints/{}/deliveries", endpoint_id), {
            "limit": limit, "starting_after": starting_after,
        })

    def iterate_deliveries(
        self, endpoint_id: str, *, page_size: int = 100, max_items: int | None = None,
    ) -> AsyncIterator[JSONObject]:
        async def fetch(cursor: str | None) -> Page:
            return await self.deliveries(endpoint_id, limit=page_size, starting_after=cursor)
        return iterate(fetch, None, max_items)


class Balance(_Resource):
    """``/v1/balance``."""

    async def retrieve(self) -> JSONObject:
        """The merchant's receivable balance per currency."""
        return await self._requester.request("GET", "/v1/balance")

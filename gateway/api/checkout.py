"""The hosted checkout's status, for its own page and for the shop's page (CORS): by the client secret."""

from __future__ import annotations

from typing import Any

from gateway.api import schema
from gateway.api.routing import Call, api
from gateway.services import checkout, views

STATUS_PATH = "/v1/checkout/{id}/status"


@api.route("GET", STATUS_PATH, summary="The payer's status of a hosted checkout (authorised by its client secret)",
           auth=None, query=schema.CheckoutQuery, response=views.CheckoutStatus, tag="checkout",
           errors={404: ("checkout_unknown",)})
async def status(call: Call[None, schema.CheckoutQuery]) -> Any:
    """The status a payer sees of a hosted checkout payment, and where to send the payer next. Authorised by the
    checkout's client secret, for the checkout page and the shop's own page."""
    return await checkout.status(call.svc, call.match("id"), call.query.secret)

"""POS device enrolment, sessions and heartbeats; terminals (fleet health, revocation); wallet phone tap tokens."""

from __future__ import annotations

from typing import Any

from gateway.api import schema
from gateway.api.routing import Call, api
from gateway.auth.principals import PrincipalKind as P
from gateway.services import devices, taps, views


@api.route("POST", "/v1/terminals/{id}/enrolment_codes", summary="A one-time code to enrol the terminal's POS agent",
           auth={P.MERCHANT, P.OPERATOR}, roles={"admin"}, body=schema.Empty, response=devices.EnrolmentCodeView,
           status=201, tag="devices", idempotent=False)
async def enrolment_code(call: Call[schema.Empty, None]) -> Any:
    """A one-time code, valid for a short while, that a POS agent exchanges for device credentials of this
    terminal."""
    return await devices.create_enrolment_code(call.svc, call.who, call.match("id"))


@api.route("POST", "/v1/devices/enrolments", summary="Exchange an enrolment code for device credentials", auth=None,
           body=schema.EnrolDevice, response=devices.EnrolmentView, status=201, tag="devices",
           errors={401: ("invalid_enrolment_code",), 429: schema.SIGN_IN_CODES})
async def enrol(call: Call[schema.EnrolDevice, None]) -> Any:
    """Exchange an enrolment code for the device's id, secret and first access token. The code works once; wrong
    codes are counted and lock out."""
    return await devices.enrol(call.svc, call.body.code, call.body.name, call.client_address)


@api.route("POST", "/v1/devices/sessions", summary="Renew a device token with the device secret", auth=None,
           body=schema.RenewDevice, response=devices.DeviceTokenView, status=201, tag="devices",
           errors={401: ("invalid_device_credentials", "device_revoked"), 403: ("merchant_suspended",),
                   429: schema.SIGN_IN_CODES})
async def renew(call: Call[schema.RenewDevice, None]) -> Any:
    """A fresh device access token for the device's id and secret."""
    return await devices.renew(call.svc, call.body.device, call.body.device_secret, call.client_address)


@api.route("POST", "/v1/devices/heartbeat", summary="The agent's periodic report: its version and offline backlog",
           auth={P.DEVICE}, body=schema.DeviceHeartbeat, response=devices.HeartbeatView, tag="devices",
           idempotent=False)
async def heartbeat(call: Call[schema.DeviceHeartbeat, None]) -> Any:
    """The agent's periodic report (its version and offline backlog), which also sets the terminal's last-seen
    time. A report replaces the previous one, so a repeated one changes nothing more: no Idempotency-Key."""
    b = call.body
    return await devices.heartbeat(call.svc, call.who, b.agent_version, b.offline_backlog_count,
                                   b.offline_backlog_oldest_age_s)


@api.route("GET", "/v1/terminals", summary="Terminals with their agent's version, last heartbeat and offline backlog",
           auth={P.MERCHANT, P.OPERATOR}, query=schema.PageQuery, response=views.TerminalList, tag="devices",
           errors={400: ("invalid_cursor",)})
async def list_terminals(call: Call[None, schema.PageQuery]) -> Any:
    """The merchant's terminals (an operator: every merchant's), newest first, with fleet health: the agent's
    version, its last heartbeat and its offline backlog."""
    return await devices.list_terminals(call.svc, call.who, call.query.page())


@api.route("GET", "/v1/terminals/{id}", summary="A terminal with its agent's version, last heartbeat and offline backlog",
           auth={P.MERCHANT, P.OPERATOR}, response=views.TerminalView, tag="devices")
async def get_terminal(call: Call[None, None]) -> Any:
    """One terminal with its fleet health (agent version, last heartbeat, offline backlog)."""
    return await devices.get_terminal(call.svc, call.who, call.match("id"))


@api.route("POST", "/v1/terminals/{id}/revoke", summary="Revoke a terminal and every device enrolled on it",
           auth={P.MERCHANT, P.OPERATOR}, roles={"admin"}, body=schema.Empty, response=views.TerminalView,
           tag="devices")
async def revoke_terminal(call: Call[schema.Empty, None]) -> Any:
    """Revoke a terminal and every device enrolled on it: their tokens are refused from now on."""
    return await devices.revoke_terminal(call.svc, call.who, call.match("id"), call.identity())


@api.route("POST", "/v1/wallet/tap_tokens", summary="Provision this phone for NFC taps (key shown once)",
           auth={P.WALLET}, body=schema.Empty, response=taps.TapTokenView, status=201, tag="wallet",
           errors={400: ("device_required",), 409: ("token_exhausted",), 503: ("taps_not_configured",)},
           idempotent=False)
async def provision(call: Call[schema.Empty, None]) -> Any:
    """Provision the phone the holder logged in with for NFC taps: a payment token and its card key, shown in
    this answer only."""
    return await taps.provision(call.svc, call.who)


@api.route("POST", "/v1/wallet/tap_tokens/{id}/revoke", summary="Revoke a phone's tap token", auth={P.WALLET},
           body=schema.Empty, response=taps.RevokedTapTokenView, tag="wallet", idempotent=False)
async def revoke_token(call: Call[schema.Empty, None]) -> Any:
    """Revoke one of the holder's tap tokens; taps with it are declined from now on."""
    return await taps.revoke(call.svc, call.who, call.match("id"))

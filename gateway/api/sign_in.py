"""Sign-in security endpoints: code challenges, trusted devices, password change, verification levels."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from gateway.api import schema
from gateway.api.routing import Call, api
from gateway.auth.principals import PrincipalKind as P
from gateway.services import sign_in, verification, views

_CHALLENGE_DEAD = ("challenge_used", "challenge_exhausted", "challenge_expired")


class VerifyCode(schema.Strict):
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=20, description="The code sent to the phone")]


class ChangePassword(schema.Strict):
    current_password: schema.Text
    new_password: schema.Text


class Upgrade(schema.Strict):
    level: verification.LevelName
    reference: verification.Reference | None = None  # the evidence checked (a document number's reference, ...)


@api.route("POST", "/v1/wallet/challenges/{id}/verify", summary="Answer a sign-in challenge with the code sent",
           auth=None, body=VerifyCode, response=views.TokenView,
           status=201, tag="wallet",
           errors={400: ("invalid_code_format",), 401: ("incorrect_code",),
                   409: _CHALLENGE_DEAD})
async def verify(call: Call[VerifyCode, None]) -> Any:
    """Exchange a sign-in challenge and the code sent to the phone for a wallet token: the phone is proven and
    the device trusted (its next sign-ins need no code). Each wrong code counts; after the last allowed one, or
    once used or expired, the challenge is dead."""
    return await sign_in.verify(call.svc, call.match("id"), call.body.code)


@api.route("POST", "/v1/wallet/challenges/{id}/resend", summary="Send a new code for a live sign-in challenge",
           auth=None, body=schema.Empty, response=sign_in.SignInChallengeView, tag="wallet",
           errors={409: _CHALLENGE_DEAD + ("resends_exhausted",),
                   429: ("resend_too_soon",)})
async def resend(call: Call[schema.Empty, None]) -> Any:
    """Send a new code (the previous one dies; wrong tries still count), at most every resend interval and a few
    times per challenge."""
    return await sign_in.resend(call.svc, call.match("id"))


@api.route("GET", "/v1/wallet/devices", summary="The holder's trusted, signed-in devices", auth={P.WALLET},
           query=schema.PageQuery, response=sign_in.WalletDeviceList, tag="wallet",
           errors={400: ("invalid_cursor",)})
async def devices(call: Call[None, schema.PageQuery]) -> Any:
    """The devices the holder proved with a code (or used before codes existed), newest first; current marks the
    device of the token asking."""
    return await sign_in.devices(call.svc, call.who, call.query.page())


@api.route("DELETE", "/v1/wallet/devices/{id}", summary="Sign a device out and forget its trust",
           auth={P.WALLET}, response=sign_in.WalletDeviceView, tag="wallet")
async def revoke_device(call: Call[None, None]) -> Any:
    """Revoke a device: its tokens stop working at once, and its next sign-in needs a code again."""
    return await sign_in.revoke_device(call.svc, call.who, call.match("id"), call.identity())


@api.route("POST", "/v1/wallet/password", summary="Change the password; signs out every other device",
           auth={P.WALLET}, body=ChangePassword, response=sign_in.PasswordChangedView, tag="wallet",
           errors={400: ("weak_password",), 403: ("incorrect_password",), 429: schema.SIGN_IN_CODES},
           idempotent=False)
async def change_password(call: Call[ChangePassword, None]) -> Any:
    """Change the password (current_password is needed; wrong ones count towards the sign-in lockout). Every other
    session is signed out and every other device must prove itself with a code again."""
    b = call.body
    return await sign_in.change_password(call.svc, call.who, b.current_password, b.new_password, call.client_address)


@api.route("POST", "/v1/operator/wallet_holders/{id}/verification",
           summary="Raise a holder's verification level (and tier): phone, real_name, bank_card, in_person",
           auth={P.OPERATOR}, roles={"admin", "support"}, body=Upgrade, response=verification.UpgradeView,
           tag="operators", errors={400: ("invalid_level",), 409: ("verification_level_lower",)}, idempotent=False)
async def upgrade(call: Call[Upgrade, None]) -> Any:
    """Record a verification the operator checked: the level opens its tier (phone 4, real_name 3, bank_card 2,
    in_person 1), never weakening one set before. Levels never go down. Audited."""
    return await verification.operator_upgrade(call.svc, call.who, call.match("id"), call.body.level,
                                               call.body.reference)


@api.route("POST", "/v1/kyc/callbacks", summary="A KYC provider's signed verdict (Standard Webhooks signature)",
           auth=None, response=verification.KycCallbackView, tag="operators",
           errors={400: ("invalid_callback",),
                   401: ("signature_missing", "timestamp_invalid", "timestamp_out_of_tolerance", "signature_invalid"),
                   403: ("kyc_hook_disabled",), 404: ("resource_missing",), 409: ("callback_replayed",)})
async def kyc_callback(call: Call[None, None]) -> Any:
    """A KYC provider reports a holder's verification ({"holder", "level", "reference"}), signed with the
    configured secret over the raw body (webhook-id, webhook-timestamp, webhook-signature); stale timestamps and
    replayed webhook-ids are refused, and levels never go down."""
    return await verification.kyc_callback(call.svc, call.request.headers, await call.request.read())

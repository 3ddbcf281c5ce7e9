"""The sign-in code sender: delivers the outbox of one-time codes to the SMS hook.

Invariants:
- a message is leased (``services.sign_in.claim_codes``) before its attempt and its outcome recorded
  after; a process that dies in between leaves it due again when the lease ends (a code may then
  be sent twice, never lost while its challenge lives);
- each attempt is one POST of the message's JSON to ``sign_in.sms_hook_url``, signed like webhooks
  when ``sms_hook_secret`` is set, bounded by ``sms_hook_timeout_s``; only a 2xx is delivered;
  redirects are not followed; at most ``sms_hook_attempts_max`` attempts, never past the code's expiry;
- the code is never logged: log lines name the message id only;
- the loop wakes when this process queued a code (``Services.codes_due``) and every
  ``sender_poll_interval_s`` (retries, messages of a stopped process); it reaps ended sessions,
  challenges and KYC callback ids every ``_REAP_INTERVAL_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp

from gateway.domain import webhooks as signing
from gateway.domain.ids import Kind, encode
from gateway.services import sign_in
from gateway.services.context import Services

log = logging.getLogger(__name__)
_REAP_INTERVAL_S = 60.0
_DB_CALL_TIMEOUT_S = 30.0
_USER_AGENT = "wallet-gateway-sign-in-codes/1"

# What sends one message: the HTTP hook here; a real SMS gateway is reached through the same hook.
Send = Callable[[aiohttp.ClientSession, Services, sign_in.Outgoing], Awaitable[str | None]]


async def http_hook(session: aiohttp.ClientSession, svc: Services, message: sign_in.Outgoing) -> str | None:
    """POST the message; None when delivered (2xx), else why not. Never raises."""
    settings = svc.settings.sign_in
    headers = {"Content-Type": "application/json", "User-Agent": _USER_AGENT}
    if settings.sms_hook_secret:
        headers.update(signing.signed_headers(encode(Kind.SIGN_IN_MESSAGE, message.message_id),
                                              int(time.time()), message.body, [settings.sms_hook_secret]))
    try:
        async with session.post(settings.sms_hook_url, data=message.body, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=settings.sms_hook_timeout_s)) as resp:
            return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
    except TimeoutError:
        return f"no answer within {settings.sms_hook_timeout_s} s"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return type(exc).__name__


class CodeSender:
    def __init__(self, svc: Services, send: Send = http_hook) -> None:
        self.svc = svc
        self.send = send
        self._reaped_at = 0.0

    async def run(self) -> None:
        settings = self.svc.settings.sign_in
        async with aiohttp.ClientSession(trust_env=False) as session:
            while True:
                self.svc.codes_due.clear()
                full = False
                try:
                    full = await self.tick(session)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("sign-in code sender tick failed; will retry", exc_info=True)
                if full:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.svc.codes_due.wait(), settings.sender_poll_interval_s)

    async def tick(self, session: aiohttp.ClientSession) -> bool:
        """Send what is due; True if the batch was full (more may be due)."""
        if time.monotonic() - self._reaped_at > _REAP_INTERVAL_S:
            self._reaped_at = time.monotonic()
            await asyncio.wait_for(sign_in.reap(self.svc), _DB_CALL_TIMEOUT_S)
        if not self.svc.settings.sign_in.sms_hook_url:
            return False
        claimed = await asyncio.wait_for(sign_in.claim_codes(self.svc), _DB_CALL_TIMEOUT_S)
        await asyncio.gather(*(self._deliver(session, m) for m in claimed))
        return len(claimed) >= self.svc.settings.sign_in.sender_batch_max

    async def _deliver(self, session: aiohttp.ClientSession, message: sign_in.Outgoing) -> None:
        try:
            error = await self.send(session, self.svc, message)
            outcome = await asyncio.wait_for(sign_in.record_delivery(self.svc, message, error), _DB_CALL_TIMEOUT_S)
            if error is not None:
                log.info("sign-in code not delivered", extra={"sms_message": message.message_id.hex,
                                                              "attempt": message.attempts, "error": error,
                                                              "outcome": outcome})
        except Exception:  # the lease ends and the message is sent again
            log.warning("sign-in code delivery could not be recorded", extra={"sms_message": message.message_id.hex})

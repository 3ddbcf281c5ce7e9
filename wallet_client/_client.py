"""``WalletClient``: the resources of one merchant's API key over one aiohttp session.

Invariants: the client closes only a session it created; it refuses an empty key and a base URL
that is not http(s); nothing of the key is kept but the ``Authorization`` header value.
"""

from __future__ import annotations

import random
from types import TracebackType

import aiohttp

from wallet_client._http import Requester
from wallet_client._resources import Balance, Events, Payments, Refunds, WebhookEndpoints
from wallet_client._retry import RetryPolicy

__version__ = "0.1.0"
DEFAULT_TIMEOUT_S = 30.0
CONNECTIONS_MAX = 32


class WalletClient:
    """An async client of the wallet gateway's merchant API.

    ``api_key`` is the merchant's secret key (``sk_...``); ``base_url`` the gateway's address,
    e.g. ``https://pay.example.com``. ``timeout_s`` bounds each HTTP attempt; ``retry`` bounds the
    client's own retries. Pass ``session`` to share an ``aiohttp.ClientSession`` (it is then yours
    to close). Use it as ``async with WalletClient(...) as wallet:`` or call ``await close()``.
    """

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not api_key or any(c.isspace() for c in api_key):
            raise ValueError("api_key must be a non-empty key without whitespace")
        if not base_url.startswith(("https://", "http://")):
            raise ValueError("base_url must start with https:// (or http:// for a local gateway)")
        if not 0 < timeout_s <= 600:
            raise ValueError("timeout_s must be within (0, 600]")
        self._own_session = session is None
        self._session = session or aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS_MAX))
        requester = Requester(api_key=api_key, base_url=base_url, session=self._session,
                              policy=retry or RetryPolicy(), timeout_s=timeout_s,
                              user_agent=f"wallet-client-python/{__version__}", rng=rng)
        self.payments = Payments(requester)
        self.refunds = Refunds(requester)
        self.events = Events(requester)
        self.webhook_endpoints = WebhookEndpoints(requester)
        self.balance = Balance(requester)

    async def close(self) -> None:
        if self._own_session:
            await self._session.close()

    async def __aenter__(self) -> WalletClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        await self.close()

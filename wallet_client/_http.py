"""One logical API call: build the request, send it with bounded retries, turn the answer into data or an error.

Invariants: a POST or DELETE gets its ``Idempotency-Key`` (the caller's, or a fresh UUID4) once,
before the first attempt, and sends that same key on every retry of the call; each attempt has a
timeout and each answer body a size cap; redirects are not followed (an API answer is never a
redirect, and following one would resend the key and body elsewhere); the API key is sent only in
the ``Authorization`` header and never put into an error or a log.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp

from wallet_client import _retry
from wallet_client._errors import APIConnectionError, APIError, APITimeoutError, WalletError, error_class

JSONObject = dict[str, Any]
QueryValue = str | int | bool | None

BODY_MAX_BYTES = 8 << 20
IDEMPOTENCY_KEY_MAX_CHARS = 255
_KEYED_METHODS = frozenset({"POST", "DELETE"})


class Requester:
    """Sends calls for one API key to one base URL over one aiohttp session."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        session: aiohttp.ClientSession,
        policy: _retry.RetryPolicy,
        timeout_s: float,
        user_agent: str,
        rng: random.Random | None = None,
    ) -> None:
        self._auth = f"Bearer {api_key}"
        self._base_url = base_url.rstrip("/")
        self._session = session
        self._policy = policy
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._user_agent = user_agent
        self._rng = rng or random.SystemRandom()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, QueryValue] | None = None,
        body: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> JSONObject:
        """Perform the call; returns the decoded JSON object of the 2xx answer or raises a ``WalletError``."""
        headers = {"Authorization": self._auth, "Accept": "application/json", "User-Agent": self._user_agent}
        if method in _KEYED_METHODS:
            key = idempotency_key if idempotency_key is not None else str(uuid.uuid4())
            if not 0 < len(key) <= IDEMPOTENCY_KEY_MAX_CHARS:
                raise ValueError(f"idempotency_key must be 1..{IDEMPOTENCY_KEY_MAX_CHARS} characters")
            headers["Idempotency-Key"] = key
        elif idempotency_key is not None:
            raise ValueError(f"{method} requests take no idempotency key")
        data: bytes | None = None
        if method == "POST":
            data = json.dumps(dict(body or {}), separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        query = _query(params)
        url = self._base_url + path
        started = time.monotonic()
        retry_index = 0
        while True:
            try:
                return await self._attempt(method, url, headers, query, data)
            except WalletError as error:
                error.attempt_count = retry_index + 1
                if not _retry.retryable(error) or retry_index >= self._policy.retry_count_max:
                    raise
                wait_s = _retry.delay_s(self._policy, retry_index, error.retry_after_s, self._rng)
                if wait_s is None or time.monotonic() - started + wait_s > self._policy.elapsed_max_s:
                    raise
            await asyncio.sleep(wait_s)
            retry_index += 1

    async def _attempt(
        self, method: str, url: str, headers: Mapping[str, str], query: list[tuple[str, str]], data: bytes | None,
    ) -> JSONObject:
        try:
            async with self._session.request(
                method, url, params=query, data=data, headers=headers, timeout=self._timeout, allow_redirects=False,
            ) as resp:
                raw = await _read_capped(resp)
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                header_request_id = resp.headers.get("Request-Id") or resp.headers.get("X-Request-Id")
        except asyncio.TimeoutError as exc:
            raise APITimeoutError(f"no answer from {method} {url} within {self._timeout.total} s") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise APIConnectionError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc
        decoded = _json_object(raw)
        if 200 <= status < 300 and decoded is not None:
            return decoded
        return _raise_for(status, decoded, retry_after, header_request_id, method, url)


def _raise_for(
    status: int, decoded: JSONObject | None, retry_after: str | None, header_request_id: str | None, method: str,
    url: str,
) -> JSONObject:
    error = decoded.get("error") if decoded is not None else None
    if 200 <= status < 300 or not isinstance(error, dict):
        # Not the gateway's error body (a proxy's page, a cut body, a 2xx that is not JSON).
        raise APIError(f"{method} {url}: HTTP {status} without the gateway's JSON body", http_status=status,
                       request_id=header_request_id, retry_after_s=_retry.parse_retry_after_s(retry_after),
                       body=decoded)
    code = _opt_str(error, "code")
    cls = error_class(status, code)
    raise cls(
        _opt_str(error, "message") or f"HTTP {status}",
        http_status=status,
        type=_opt_str(error, "type"),
        code=code,
        param=_opt_str(error, "param"),
        request_id=_opt_str(error, "request_id") or header_request_id,
        retry_after_s=_retry.parse_retry_after_s(retry_after),
        body=decoded,
    )


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > BODY_MAX_BYTES:
            # Not retried: the same request would get the same oversized answer.
            raise WalletError(f"answer body over {BODY_MAX_BYTES} bytes", http_status=resp.status)
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(raw: bytes) -> JSONObject | None:
    try:
        decoded = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None
    return decoded if isinstance(decoded, dict) else None


def _opt_str(raw: Mapping[str, Any], name: str) -> str | None:
    value = raw.get(name)
    return value if isinstance(value, str) else None


def _query(params: Mapping[str, QueryValue] | None) -> list[tuple[str, str]]:
    """Query pairs with ``None`` dropped and booleans as ``true``/``false`` (the gateway's strict parser)."""
    pairs: list[tuple[str, str]] = []
    for name, value in (params or {}).items():
        if value is None:
            continue
        pairs.append((name, ("true" if value else "false") if isinstance(value, bool) else str(value)))
    return pairs

"""The SMS gateway, simulated: a real HTTP server on 127.0.0.1 that receives the sign-in code hook
(no phone network can exist here; what crosses the line is the hook's real request, signed as
configured). The demo, the tests and the benchmarks read the codes "sent to a phone" from it.

It verifies the hook's signature when given the secret (and refuses a bad one with 401), answers
202, and can be told to fail the next N requests (503) to exercise the sender's retries. It can run
in the caller's event loop (``start``) or in a thread of its own (``in_thread``), for callers whose
event loops come and go (pytest) or that are other processes' parents (the benchmark).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from aiohttp import web

from gateway.domain import verification

MESSAGES_PER_PHONE_MAX = 100


@dataclass(frozen=True)
class Text:
    to: str
    code: str
    text: str
    reference: str | None  # the challenge it answers
    received_s: float


class SmsGatewaySim:
    def __init__(self, secret: str = "") -> None:
        self.secret = secret
        self._texts: dict[str, list[Text]] = {}
        self._lock = threading.Lock()
        self.fail_next = 0  # answer 503 to this many requests
        self.refused = 0  # requests with a bad signature
        self.received = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16384)
        app.router.add_post("/messages", self._receive)
        app.router.add_get("/messages", self._list)
        return app

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.secret:
            try:
                verification.verify_callback(self.secret, request.headers.get("webhook-id"),
                                             request.headers.get("webhook-timestamp"),
                                             request.headers.get("webhook-signature"), body, int(time.time()), 300)
            except verification.CallbackRefused:
                self.refused += 1
                return web.json_response({"error": "bad signature"}, status=401)
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return web.json_response({"error": "try later"}, status=503)
            message = json.loads(body)
            found = self._texts.setdefault(message["to"], [])
            found.append(Text(message["to"], message["code"], message["text"], message.get("reference"), time.time()))
            del found[:-MESSAGES_PER_PHONE_MAX]
            self.received += 1
        return web.json_response({"status": "queued"}, status=202)

    async def _list(self, request: web.Request) -> web.Response:
        to = request.query.get("to", "")
        return web.json_response([{"to": t.to, "text": t.text} for t in self.texts(to)])

    def texts(self, phone: str) -> list[Text]:
        with self._lock:
            return list(self._texts.get(phone, []))

    def latest(self, phone: str, reference: str | None = None) -> Text | None:
        found = [t for t in self.texts(phone) if reference is None or t.reference == reference]
        return found[-1] if found else None

    async def code(self, phone: str, reference: str | None = None, *, after: int = 0, timeout_s: float = 10.0) -> str:
        """The code of the latest text to ``phone`` (for challenge ``reference``), once it has more than
        ``after`` texts; waits up to ``timeout_s`` for it to arrive."""
        deadline = time.monotonic() + timeout_s
        while True:
            texts = [t for t in self.texts(phone) if reference is None or t.reference == reference]
            if len(texts) > after:
                return texts[-1].code
            if time.monotonic() > deadline:
                raise TimeoutError(f"no code reached {phone[:3]}... within {timeout_s} s")
            await asyncio.sleep(0.005)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.url = f"http://{host}:{bound}/messages"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @contextlib.contextmanager
    def in_thread(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[SmsGatewaySim]:
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start(host, port))
            except BaseException as exc:  # reported to the caller below
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        thread = threading.Thread(target=serve, name="sms-gateway-sim", daemon=True)
        thread.start()
        started.wait(10)
        if failure:
            raise failure[0]
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

"""What honouring session revocation costs a wallet request: the authentication of a wallet token
(``tenants.authenticate``: the verified-token memo, then the revocation check) with and without the
check, against a real PostgreSQL whose revocation listener is up, with ``--revoked`` revoked sessions
in the process's set. No HTTP: the figure is the CPU added to each wallet request.

    .venv/bin/python bench/wallet_sessions.py --rounds 5 --calls 100000 --revoked 10000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway import settings as settings_mod  # noqa: E402
from gateway.services import tenants  # noqa: E402
from gateway.services.context import Services  # noqa: E402
from gateway.services.wallets import WALLET_AUDIENCE  # noqa: E402
from gateway.store import db  # noqa: E402


async def _per_call_ns(calls: int, authenticate: bool, svc: Services, header: str, token: str) -> float:
    started = time.perf_counter_ns()
    if authenticate:
        for _ in range(calls):
            await tenants.authenticate(svc, header)
    else:  # the same path without the revocation check: the memo and the principal's claims
        for _ in range(calls):
            claims = svc.tokens.verify(token, WALLET_AUDIENCE)
            svc.tokens.uuid_claim(claims, "sub")
            svc.tokens.uuid_claim(claims, "sid")
    return (time.perf_counter_ns() - started) / calls


async def _check_ns(calls: int, svc: Services, holder_id: uuid.UUID, session_id: uuid.UUID) -> float:
    assert svc.revocations is not None
    check = svc.revocations.check
    now_s = int(time.time())
    started = time.perf_counter_ns()
    for _ in range(calls):
        await check(holder_id, session_id, now_s)
    return (time.perf_counter_ns() - started) / calls


async def main(args: argparse.Namespace) -> int:
    await db.migrate(args.database_url)
    settings = settings_mod.load(env={}, database={"url": args.database_url})
    svc = await Services.start(settings)
    try:
        assert svc.revocations is not None
        async with svc.api_keys.listening_while(args.database_url), \
                svc.revocations.listening_while(args.database_url):
            assert svc.revocations.answering, "the revocation listener did not come up"
            far_s = time.time() + 3600
            for _ in range(args.revoked):
                svc.revocations.add(uuid.uuid4(), uuid.uuid4(), far_s, time.time())
            holder_id, session_id = uuid.uuid4(), uuid.uuid4()
            token = svc.tokens.issue(holder_id, WALLET_AUDIENCE, 900, sid=str(session_id), did="bench")
            header = f"Bearer {token}"
            await tenants.authenticate(svc, header)  # the first use verifies the HMAC and fills the memo
            with_check, without, check_only = [], [], []
            for _ in range(args.rounds):
                without.append(await _per_call_ns(args.calls, False, svc, header, token))
                with_check.append(await _per_call_ns(args.calls, True, svc, header, token))
                check_only.append(await _check_ns(args.calls, svc, holder_id, session_id))
            print(f"revoked sessions in the set: {svc.revocations.size}; database checks: "
                  f"{svc.revocations.database_checks}")
            print(f"memo + claims only:          median {statistics.median(without):7.0f} ns per call")
            print(f"authenticate (with check):   median {statistics.median(with_check):7.0f} ns per call")
            print(f"the revocation check alone:  median {statistics.median(check_only):7.0f} ns per call")
    finally:
        await svc.stop()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/gateway_bench_sessions")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--revoked", type=int, default=10_000)
    sys.exit(asyncio.run(main(parser.parse_args())))

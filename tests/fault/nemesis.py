"""The nemesis: runs the seeded schedule against the real processes and records each fault's window.

A window runs from the moment the fault is injected until the component is back (the gateways
answer /healthz again, PostgreSQL accepts connections, the process is resumed). A gateway that
exits without having been killed is an anomaly (it is restarted, so the run goes on).

Just before a stalled gateway is resumed, PostgreSQL is asked what the stall did to it: a session
waiting for a lock, or idle in a transaction, for longer than ``stuck_limit_s`` means the
database lets one stopped process hold everyone else up (no lock_timeout /
idle_in_transaction_session_timeout): an anomaly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import asyncpg

from tests.e2e.harness import GatewayProcess
from tests.fault.cluster import PostgresCluster, RedisServer
from tests.fault.schedule import Fault, FaultKind

RESTART_TIMEOUT_S = 30.0
STUCK_SQL = """
SELECT pid, state, wait_event_type AS waiting, round(extract(epoch FROM now() - state_change)::numeric, 1) AS age_s,
       left(query, 60) AS query
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND now() - state_change > make_interval(secs => $1)
  AND (wait_event_type = 'Lock' OR state LIKE 'idle in transaction%')
"""


@dataclass(slots=True)
class Window:
    fault: Fault
    start_s: float
    end_s: float | None = None
    error: str | None = None


@dataclass
class Nemesis:
    schedule: list[Fault]
    gateways: list[GatewayProcess]
    pg: PostgresCluster
    redis: RedisServer
    t0: float
    db_url: str
    stuck_limit_s: float = 6.0
    windows: list[Window] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)

    def now_s(self) -> float:
        return time.monotonic() - self.t0

    async def run(self) -> None:
        for fault in self.schedule:
            delay_s = fault.at_s - self.now_s()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            await self.check_gateways(f"before fault #{fault.index}")
            window = Window(fault, self.now_s())
            self.windows.append(window)
            try:
                await asyncio.wait_for(self._inject(fault), fault.duration_s + 2 * RESTART_TIMEOUT_S)
            except Exception as exc:  # the run goes on: the failure is a finding
                window.error = f"{type(exc).__name__}: {exc}"
                self.anomalies.append(f"fault #{fault.index} {fault.kind} failed: {window.error}")
                await self.heal()
            window.end_s = self.now_s()

    async def _inject(self, fault: Fault) -> None:
        kind = fault.kind
        if kind is FaultKind.KILL_GATEWAY:
            assert fault.target is not None
            await self._kill_restart([self.gateways[fault.target % len(self.gateways)]], fault.duration_s)
        elif kind is FaultKind.KILL_ALL_GATEWAYS:
            await self._kill_restart(self.gateways, fault.duration_s)
        elif kind is FaultKind.STALL_GATEWAY:
            assert fault.target is not None
            gateway = self.gateways[fault.target % len(self.gateways)]
            assert gateway.process is not None and gateway.process.returncode is None
            gateway.stall()
            try:
                await asyncio.sleep(fault.duration_s)
                await self._stuck_sessions(fault)
            finally:
                gateway.resume()
        elif kind is FaultKind.PG_CRASH:
            await asyncio.to_thread(self.pg.stop_immediate)
            await asyncio.sleep(fault.duration_s)
            await asyncio.to_thread(self.pg.start)
        elif kind is FaultKind.PG_PAUSE:
            self.pg.pause()
            try:
                await asyncio.sleep(fault.duration_s)
            finally:
                self.pg.resume()
        elif kind is FaultKind.REDIS_KILL:
            await asyncio.to_thread(self.redis.kill)
            await asyncio.sleep(fault.duration_s)
            await asyncio.to_thread(self.redis.start)
        elif kind is FaultKind.REDIS_PAUSE:
            self.redis.pause()
            try:
                await asyncio.sleep(fault.duration_s)
            finally:
                self.redis.resume()

    async def _stuck_sessions(self, fault: Fault) -> None:
        rows: list[asyncpg.Record] = []
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            conn = await asyncpg.connect(self.db_url, timeout=3)
            try:
                rows = await conn.fetch(STUCK_SQL, self.stuck_limit_s, timeout=3)
            finally:
                await conn.close(timeout=3)
        if rows:
            self.anomalies.append(
                f"fault #{fault.index} (stall of gateway {fault.target} for {fault.duration_s} s): {len(rows)} "
                f"session(s) stuck longer than {self.stuck_limit_s} s: "
                + "; ".join(f"{r['state']}{' waiting on ' + r['waiting'] if r['waiting'] else ''} {r['age_s']} s "
                            f"{r['query']!r}" for r in rows[:5]))

    async def _kill_restart(self, gateways: list[GatewayProcess], down_s: float) -> None:
        await asyncio.gather(*(gateway.kill() for gateway in gateways))
        await asyncio.sleep(down_s)
        await asyncio.gather(*(gateway.start(timeout_s=RESTART_TIMEOUT_S) for gateway in gateways))

    async def check_gateways(self, when: str) -> None:
        """A gateway we did not kill has exited: record it, and start it again."""
        for index, gateway in enumerate(self.gateways):
            if gateway.process is not None and gateway.process.returncode is not None:
                self.anomalies.append(f"gateway {index} exited by itself (code {gateway.process.returncode}) {when}; "
                                      f"log {gateway.log_path}")
                await gateway.start(timeout_s=RESTART_TIMEOUT_S)

    async def heal(self) -> None:
        """Everything up again, whatever state a failed fault left it in."""
        self.pg.resume()
        self.redis.resume()
        for gateway in self.gateways:
            if gateway.process is not None and gateway.process.returncode is None:
                gateway.resume()
        if self.pg.postmaster_pid() is None:
            await asyncio.to_thread(self.pg.start)
        if self.redis.process is None or self.redis.process.poll() is not None:
            await asyncio.to_thread(self.redis.start)
        for gateway in self.gateways:
            if gateway.process is None or gateway.process.returncode is not None:
                await gateway.start(timeout_s=RESTART_TIMEOUT_S)

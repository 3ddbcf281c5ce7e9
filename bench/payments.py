"""Payments benchmark: confirmed wallet payments per second, end to end over HTTP, next to pgbench.

Run with the project's interpreter: ``.venv/bin/python bench/payments.py [--quick]``. It prints
figures and never asserts on timings; bench/README.md says what each figure means.

Steps, each bounded by a count, a duration or a timeout:
1. drop and re-create a dedicated database, migrate it, create an operator (``gateway
   create-operator``), start ``gateway serve`` with K processes on a free 127.0.0.1 port with a
   rate limit too high to throttle, wait until K serving processes exist, the port listens and
   /readyz answers 200;
2. seed through the public HTTP API: M merchants with secret keys, W wallet holders, each with a
   linked bank account and one top-up far above what the run can spend;
3. phases, each after ``VACUUM ANALYZE`` (autovacuum is off on these machines): warm-up,
   A (automatic capture, payers spread over the merchants), issue 13's rounds (short blocks: features off,
   a campaign + FX + a blocked wallet, those + a rule of every kind; one block off after the last round;
   each judged by its rate against the off blocks around it, and at equal machine speed from the CPU a
   payment costs over the bench client's own: ``figures.against_drift``, ``figures.against_yardstick``),
   A again, B (manual capture: create, pay, capture), A with every payer paying one merchant, replays,
   pay-code charges, then A paced open-loop at half of A's measured rate and the sweep; optionally the
   half-load phase again while py-spy samples one gateway process (``--only-features``: warm-up, A,
   issue 13's rounds and A again only);
4. the ledger invariant checker through GET /v1/operator/ledger/invariants;
5. the gateway is stopped, then pgbench tpcb-like runs on the same PostgreSQL in its own
   database, and the figures are printed next to the project's goals.

The parts live in bench/paybench/: config (sizes, limits, goals), load (the load generator: seeding, one
payment's flows, closed and open loops), system (the gateway's processes, CPU from /proc, the databases,
pgbench, the counter's bench), figures (phase results, goal lines, the gateway's log, the plot), profile
(py-spy). This file holds the command line and the run: the phases in order, then the summary.

Invariants kept:
- only 127.0.0.1 targets are accepted, and only databases whose name contains "bench" are dropped;
- the gateway's process group (started here, in its own session) is killed on every exit path;
- a payment counts as confirmed only when the last HTTP call of its flow returned success and the
  payment's status ``succeeded``; every other outcome is an error counted by step, status and code;
- the in-flight holders of the closed loop are distinct (holder = payment index mod W, and the
  concurrency is below W), so the figures measure the gateway, not one wallet row's lock.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from paybench.config import (
    INVARIANTS_TIMEOUT_S,
    FEATURES_SETTLE_S,
    GOAL_FEATURES_RATIO_MIN,
    GOAL_B_PGBENCH_RATIO_MIN,
    GOAL_BIG_RATIO_MIN,
    GOAL_HALF_LOAD_P99_MS_MAX,
    GOAL_ONE_MERCHANT_RATIO_MIN,
    GOAL_PAY_CODE_RATIO_MIN,
    GOAL_PGBENCH_RATIO_MIN,
    GOAL_REPLAY_RATIO_MIN,
    GOAL_RSS_MB_MAX,
    GOAL_TAP_P95_MS_MAX,
    LOCALHOST,
    OPERATOR_EMAIL,
    OPERATOR_PASSWORD,
    QUICK,
    QUIET_CORES_MAX,
    REPO,
    SWEEP_FRACTIONS,
    TOP_UP_MINOR,
    Sizes,
    db_name,
)
from paybench.figures import (
    Block,
    GatewayLog,
    PhaseResult,
    Recorder,
    against_drift,
    against_yardstick,
    cost_of,
    banner,
    fmt_ms,
    gateway_errors,
    goal_line,
    percentile_ms,
    write_plot,
)
from paybench.load import (
    LOAD_A,
    LOAD_B,
    LOAD_ONE,
    Api,
    Load,
    charge_once,
    closed_loop,
    closed_loop_of,
    group_commit_counts,
    group_commit_line,
    issue_pay_codes,
    open_loop,
    replay_once,
    seed,
)
from paybench.features import add_velocity, switch_off, switch_on
from paybench.profile import profiled_phase
from paybench.system import (
    Gateway,
    background_cores,
    drop_database,
    free_port,
    gateway_env,
    generate_payments,
    payment_counts,
    peak_rss_mb,
    clear_gateway_keys,
    recreate_database,
    run_cli,
    run_pgbench,
    run_tap_to_approval,
    statements,
    statements_lines,
    vacuum_analyze,
    wal_bytes,
)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Sizes]:
    p = argparse.ArgumentParser(prog="bench/payments.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"small sizes (~30 s) to validate the script: {QUICK}")
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/gateway_bench",
                   help="dropped and re-created; the name must contain 'bench'")
    p.add_argument("--pgbench-database", default="pgbench_bench", help="dropped and re-created; must contain 'bench'")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14",
                   help="never flushed: only the gateway's own keys (idem:, tb:, risk:w:, paycode:) are deleted at start")
    p.add_argument("--processes", type=int, default=2, help="gateway serve --processes")
    p.add_argument("--pool-max", type=int, default=None, help="database pool per process (unset: the gateway's setting)")
    p.add_argument("--merchants", type=int, default=20)
    p.add_argument("--holders", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=32, help="closed-loop payments in flight")
    p.add_argument("--count", type=int, default=5000, help="payments per phase (cap)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per phase (cap)")
    p.add_argument("--warmup", type=int, default=300, help="payments before the measured phases")
    p.add_argument("--amount", type=int, default=1000,
                   help="minor units per payment; above the gateway's PIN threshold (CNY 100000) payments fail")
    p.add_argument("--request-timeout", type=float, default=10.0, help="seconds per HTTP call")
    p.add_argument("--inflight-max", type=int, default=256, help="open-loop cap on payments in flight")
    p.add_argument("--half-rate", type=float, default=None,
                   help="open-loop payments/s (unset: half of phase A's measured rate)")
    p.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                   help="half load again while py-spy samples one gateway process (0: off)")
    p.add_argument("--pgbench-scale", type=int, default=10)
    p.add_argument("--pgbench-clients", type=int, default=16)
    p.add_argument("--pgbench-threads", type=int, default=2)
    p.add_argument("--pgbench-duration", type=int, default=15)
    p.add_argument("--skip-pgbench", action="store_true")
    p.add_argument("--gateway-src", default=str(REPO),
                   help="source tree to run the gateway from (holds gateway/), e.g. an exported commit")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help=f"before starting, wait up to this long for the machine to be idle (< {QUIET_CORES_MAX} cores busy)")
    p.add_argument("--log-dir", default=None, help="gateway log and profile go here (default: a new temp dir)")
    p.add_argument("--json", dest="json_path", default=None, help="also write the figures to this JSON file")
    p.add_argument("--plot", dest="plot_path", default=None,
                   help="PNG of p50/p99 against offered load (default: latency.png in the log directory)")
    p.add_argument("--sweep-duration", type=float, default=10.0,
                   help=f"seconds per open-loop step of the sweep over {SWEEP_FRACTIONS} of A's rate")
    p.add_argument("--big", type=int, default=0, metavar="N",
                   help="then generate N payments in SQL (a merchant the load never touches) and run A again")
    p.add_argument("--tap-sales", type=int, default=30, help="sales of bench/tap_to_approval.py (0: skip)")
    p.add_argument("--feature-rounds", type=int, default=3,
                   help="issue 13's rounds (features off, features, every rule; one block off after the last)")
    p.add_argument("--statements", action="store_true",
                   help="after each of issue 13's blocks, the statements that took the most time in it (a server"
                   " that preloads pg_stat_statements, with pg_stat_statements.track = all for the functions' own)")
    p.add_argument("--only-features", action="store_true",
                   help="issue 13's figures alone: A, issue 13's rounds, then A again (no pgbench, tap, sweep)")
    args = p.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    if args.only_features:  # issue 13's figures alone, against A measured before and after them
        args.skip_pgbench, args.tap_sales, args.big, args.profile = True, 0, 0, 0.0
    sizes = Sizes(
        processes=args.processes, merchants=args.merchants, holders=args.holders, concurrency=args.concurrency,
        count=args.count, duration_s=args.duration, warmup=args.warmup, amount_minor=args.amount,
        request_timeout_s=args.request_timeout, inflight_max=args.inflight_max, half_rate_per_s=args.half_rate,
        profile_s=args.profile, pgbench_scale=args.pgbench_scale, pgbench_clients=args.pgbench_clients,
        pgbench_threads=args.pgbench_threads, pgbench_duration_s=args.pgbench_duration, pool_max=args.pool_max,
        big=args.big, tap_sales=args.tap_sales, sweep_duration_s=args.sweep_duration,
        feature_rounds=args.feature_rounds,
    )
    positive = ("processes", "merchants", "holders", "concurrency", "count", "amount_minor", "inflight_max")
    for name in positive:
        if getattr(sizes, name) < 1:
            p.error(f"{name} must be at least 1")
    if sizes.concurrency >= sizes.holders:
        p.error("--concurrency must be below --holders, or in-flight payments would share a wallet")
    if not 0 < sizes.duration_s <= 3600 or sizes.profile_s < 0 or not 0 <= args.wait_quiet <= 3600:
        p.error("--duration must be in (0, 3600], --profile >= 0 and --wait-quiet in [0, 3600]")
    if not 1 <= sizes.feature_rounds <= 20:
        p.error("--feature-rounds must be in [1, 20]")
    if not 0 < sizes.sweep_duration_s <= 3600 or not 0 <= sizes.big <= 10**8 or not 0 <= sizes.tap_sales <= 500:
        p.error("--sweep-duration must be in (0, 3600], --big in [0, 10^8], --tap-sales in [0, 500]")
    if not (Path(args.gateway_src) / "gateway" / "__main__.py").is_file():
        p.error(f"--gateway-src {args.gateway_src} holds no gateway package")
    _local(args.database_url, "--database-url", p)
    _local(args.redis_url, "--redis-url", p)
    for name in (db_name(args.database_url), args.pgbench_database):
        if "bench" not in name:
            p.error(f"refusing to drop database {name!r}: its name must contain 'bench'")
    return args, sizes


def _local(url: str, flag: str, p: argparse.ArgumentParser) -> None:
    if urlsplit(url).hostname != LOCALHOST:
        p.error(f"{flag} must point at {LOCALHOST}")


async def run(args: argparse.Namespace, sizes: Sizes, gateway: Gateway, log_dir: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {"sizes": sizes.__dict__, "phases": {}}
    env = gateway.env
    glog = GatewayLog(gateway.log_path)
    banner("setup")
    idle_busy = await background_cores(args.wait_quiet)
    print(f"  background load before start: {idle_busy:.2f} cores busy of {os.cpu_count()}"
          + ("" if idle_busy < QUIET_CORES_MAX else "  WARNING: other processes are running; figures will be low"))
    await recreate_database(args.database_url, db_name(args.database_url))
    print(f"  database {db_name(args.database_url)} re-created; {run_cli(env, 'migrate').strip()}")
    print(f"  {await clear_gateway_keys(args.redis_url):,} gateway keys of earlier runs deleted from {args.redis_url}")
    run_cli(env, "create-operator", "--email", OPERATOR_EMAIL, "--role", "admin", stdin=OPERATOR_PASSWORD + "\n")
    gateway.start()
    timeout = aiohttp.ClientTimeout(total=sizes.request_timeout_s)
    connector = aiohttp.TCPConnector(limit=max(sizes.concurrency, sizes.inflight_max), limit_per_host=0,
                                     keepalive_timeout=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await gateway.wait_ready(session)
        print(f"  gateway from {env['PYTHONPATH']} ready on {gateway.base_url} with {sizes.processes} process(es),"
              f" pids {gateway.pids()}; log {gateway.log_path}")
        api = Api(session, gateway.base_url)

        banner("seed (public API)")
        started = time.perf_counter()
        world = await seed(api, sizes)
        print(f"  {len(world.merchants)} merchants with secret keys, {len(world.holders)} holders topped up with"
              f" {TOP_UP_MINOR} minor units each, in {time.perf_counter() - started:.1f} s")

        async def vacuum() -> None:
            print(f"  (VACUUM ANALYZE took {await vacuum_analyze(args.database_url):.1f} s)")

        banner(f"warm-up: {sizes.warmup} payments, not reported")
        await vacuum()
        glog.attach(PhaseResult("seed", Recorder(), 0.0, {}))  # skip the seeding requests
        warm = glog.attach(await closed_loop(api, world, LOAD_A, sizes, sizes.warmup, sizes.duration_s, gateway))
        print(f"  confirmed {warm.rec.confirmed} of {warm.rec.attempted}; errors {dict(warm.rec.errors) or 'none'};"
              f" 5xx logged {warm.server_5xx}")

        results: dict[str, PhaseResult] = {}

        async def plain_phase(key: str, load: Load, title: str) -> None:
            banner(f"{title}; closed loop, concurrency {sizes.concurrency},"
                   f" {sizes.count} payments or {sizes.duration_s:g} s")
            await vacuum()
            batched = await group_commit_counts(api)
            results[key] = glog.attach(
                await closed_loop(api, world, load, sizes, sizes.count, sizes.duration_s, gateway))
            results[key].print()
            print(group_commit_line(batched, await group_commit_counts(api)))

        await plain_phase("A", LOAD_A, LOAD_A.name)
        peak = results["A"].rate_per_s

        # Issue 13's figures, right after A: rounds of three short blocks (features off; a campaign, FX rates
        # and a blocked wallet; those and a rule of every other kind), then one block off after the last round.
        # This host's speed drifts within a run by as much as the goal's margin (A has moved by 1.7x between
        # two phases of one run), so each block is judged against the off blocks on either side of it, at its
        # own moment (``figures.against_drift``), and the figure is the median of the rounds.
        # A third of a phase's duration each, under the same count cap: a block shorter than a few seconds
        # measures the host's moment more than the features (1,666-payment blocks of 2.5 s did).
        block_count, block_s = sizes.count, sizes.duration_s / 3
        offs: list[Block] = []
        rounds: list[list[Block]] = []

        async def block(key: str, title: str) -> Block:
            banner(f"issue 13, {title}; closed loop, concurrency {sizes.concurrency},"
                   f" {block_count} payments or {block_s:g} s")
            await vacuum()
            glog.attach(PhaseResult("between blocks", Recorder(), 0.0, {}))  # skip the set-up requests
            batched = await group_commit_counts(api)
            wal_before = await wal_bytes(args.database_url)
            ran_before = await statements(args.database_url) if args.statements else None
            started_s = time.perf_counter()
            results[key] = glog.attach(
                await closed_loop(api, world, LOAD_A, sizes, block_count, block_s, gateway))
            wal_written = await wal_bytes(args.database_url) - wal_before
            results[key].print()
            print(group_commit_line(batched, await group_commit_counts(api)))
            if results[key].rec.confirmed:
                print(f"  write-ahead log: {wal_written / results[key].rec.confirmed:,.0f} bytes per confirmed payment")
            ran_after = await statements(args.database_url) if ran_before is not None else None
            if ran_before is not None and ran_after is not None:
                print("\n".join(statements_lines(ran_before, ran_after, results[key].rec.confirmed)))
            done = results[key]
            return Block(done.rate_per_s, (started_s + time.perf_counter()) / 2, cost_of(done.cpu, done.rate_per_s))

        for r in range(sizes.feature_rounds):
            offs.append(await block(f"f13_off_{r}", f"round {r + 1}: features off"))
            features = await switch_on(api, world, r)
            # The rule view of each gateway process is refreshed in the background: let every process see them.
            await asyncio.sleep(FEATURES_SETTLE_S)
            print(f"  {features.describe()}")
            on = [await block(f"f13_features_{r}", f"round {r + 1}: a campaign, FX rates and a blocked wallet")]
            features = await add_velocity(api, world, features)
            await asyncio.sleep(FEATURES_SETTLE_S)
            print(f"  {features.describe()}")
            on.append(await block(f"f13_every_{r}", f"round {r + 1}: and a rule of every other kind, each"
                                  " concerning every payment, none reached: velocity per wallet, device and"
                                  " merchant, unusual amount, new device, blocked device"))
            rounds.append(on)
            await switch_off(api, world, features)
            await asyncio.sleep(FEATURES_SETTLE_S)
        offs.append(await block(f"f13_off_{sizes.feature_rounds}", "after the last round: features off"))
        issue13 = against_drift(offs, rounds)
        issue13_cpu = against_yardstick(offs, rounds)
        for r, (features_x, every_x) in enumerate(issue13, start=1):
            print(f"  round {r}: campaign + FX + blocked wallet {features_x:.3f}x, those + a rule of every kind"
                  f" {every_x:.3f}x of the off blocks around them")
            if issue13_cpu is not None:
                cpu_f, cpu_e = issue13_cpu[r - 1]
                print(f"    at equal machine speed (CPU per payment, the client's as yardstick): {cpu_f:.3f}x,"
                      f" {cpu_e:.3f}x")
        glog.attach(PhaseResult("features off", Recorder(), 0.0, {}))
        await plain_phase("A_again", LOAD_A, "A again, issue 13's features off")
        # What is judged against A from here on (one merchant, replays, the half load, the sweep) takes this A,
        # measured next to it: the host's speed drifts within a run (2026-12-07: A at 650/s at the start and
        # 499/s here, the bench client's own CPU per payment up by a third with it), so the first A would judge
        # them against another machine. A / pgbench keeps the first A (pgbench, at the end, drifts too).
        reference = results["A_again"].rate_per_s
        if not args.only_features:
            await plain_phase("one_merchant", LOAD_ONE, LOAD_ONE.name)  # first: the closest to A again
            await plain_phase("B", LOAD_B, LOAD_B.name)

        sweep: list[dict[str, Any]] = []
        plot: str | None = None
        half_rate = 0.0
        if not args.only_features:
            replayable = results["A"].rec.replayable
            banner(f"idempotent replays: A's {len(replayable)} pay calls again with their Idempotency-Key, closed loop,"
                   f" {sizes.count} replays or {sizes.duration_s:g} s")
            if replayable:
                results["replays"] = glog.attach(await closed_loop_of(
                    "replays of A's pay calls", lambda rec, i: replay_once(api, rec, replayable[i % len(replayable)]),
                    sizes, sizes.count, sizes.duration_s, gateway))
                results["replays"].print()
            else:
                print("  skipped: phase A confirmed nothing")

            banner(f"pay-code charges (one call per payment), closed loop, {sizes.count} charges or {sizes.duration_s:g} s")
            started = time.perf_counter()
            codes = await issue_pay_codes(api, world, sizes.count)
            print(f"  {len(codes)} pay-codes issued beforehand (not measured) in {time.perf_counter() - started:.1f} s")
            await vacuum()
            glog.attach(PhaseResult("pay-code issue", Recorder(), 0.0, {}))  # skip the issuing requests
            results["pay_code"] = glog.attach(await closed_loop_of(
                "pay-code charges", lambda rec, i: charge_once(api, rec, world, codes, i, sizes.amount_minor),
                sizes, len(codes), sizes.duration_s, gateway))
            results["pay_code"].print()

            half_rate = sizes.half_rate_per_s or reference / 2
            banner(f"half load: A paced open loop at {half_rate:,.1f} payments/s,"
                   f" {sizes.count} payments or {sizes.duration_s:g} s")
            if half_rate > 0:
                await vacuum()
                batched = await group_commit_counts(api)
                results["half_load"] = glog.attach(await open_loop(api, world, LOAD_A, sizes, half_rate, sizes.count,
                                                                  sizes.duration_s, gateway))
                results["half_load"].print()
                print(group_commit_line(batched, await group_commit_counts(api)))
            else:
                print("  skipped: phase A confirmed nothing")

            banner(f"sweep: A paced open loop at {', '.join(f'{f:g}' for f in SWEEP_FRACTIONS)} of A again's"
                   f" {reference:,.1f}/s,"
                   f" {sizes.sweep_duration_s:g} s each")
            for fraction in SWEEP_FRACTIONS if reference > 0 else ():
                await vacuum()
                step = glog.attach(await open_loop(api, world, LOAD_A, sizes, fraction * reference, 10**9,
                                                   sizes.sweep_duration_s, gateway))
                point = {"fraction": fraction, "offered_per_s": fraction * reference, **step.figures()}
                sweep.append(point)
                print(f"  {fraction:4.2f} x peak: offered {fraction * reference:8,.1f}/s,"
                      f" confirmed {step.rate_per_s:8,.1f}/s,"
                      f" p50 {fmt_ms(point['p50_ms'])} ms, p99 {fmt_ms(point['p99_ms'])} ms,"
                      f" errors {sum(step.rec.errors.values())}")
            plot_path = Path(args.plot_path) if args.plot_path else log_dir / "latency.png"
            plot = write_plot(sweep, reference, plot_path)
            print(f"  plot: {plot}")

        big_s: float | None = None
        if sizes.big:
            # Against A measured right before the generation, not the first A: every phase in between adds
            # payments, decisions and events (and the host drifts), so that A is not the empty database's.
            await plain_phase("A_before_big", LOAD_A, f"A again, before {sizes.big:,} payments are added")
            banner(f"A again with {sizes.big:,} more payments in the database")
            archive = await api.seed("POST", "/v1/merchants", 201, world.operator_token,
                                     {"name": "Bench archive merchant", "mcc": "5812", "country": "CN",
                                      "city": "Beijing"})
            # The API's id is "mer_" + the row's uuid in hex.
            archive_id = uuid.UUID(hex=str(archive["id"]).rpartition("_")[2])
            big_s = await generate_payments(args.database_url, archive_id, sizes.big)
            print(f"  {sizes.big:,} canceled payments of a merchant the load never pays generated in SQL in"
                  f" {big_s:.1f} s")
            await vacuum()
            glog.attach(PhaseResult("generation", Recorder(), 0.0, {}))
            results["A_big"] = glog.attach(
                await closed_loop(api, world, LOAD_A, sizes, sizes.count, sizes.duration_s, gateway))
            results["A_big"].print()

        # VmHWM is each process's peak since it started: read after every load phase, before the stop.
        rss_mb = peak_rss_mb(gateway)
        print("\n  gateway serving processes, peak RSS since start (VmHWM, the seeding's Argon2 hashes included): "
              + ", ".join(f"pid {pid} {mb:,.1f} MB" for pid, mb in rss_mb.items()))
        # Under payment load: the largest process's VmRSS at the end of every load phase and sweep step.
        loaded_mb = [r.rss_mb for r in results.values() if r.rss_mb is not None]
        loaded_mb += [pt["rss_mb"] for pt in sweep if pt.get("rss_mb") is not None]
        load_rss_mb = max(loaded_mb, default=None)
        print("  largest serving process's RSS at the end of a load phase (VmRSS): "
              + (f"{load_rss_mb:,.1f} MB" if load_rss_mb is not None else "n/a"))

        profile: list[str] = []
        profiled: PhaseResult | None = None
        if sizes.profile_s > 0 and half_rate > 0:
            banner(f"profile: A paced at {half_rate:,.1f}/s again, py-spy on one gateway process"
                   f" for {sizes.profile_s:g} s")
            await vacuum()
            profile, profiled = await profiled_phase(api, world, sizes, half_rate, gateway, log_dir)
            print("\n".join(profile))

        if not sizes.big:
            banner("ledger invariants (GET /v1/operator/ledger/invariants)")
            report = await api.seed("GET", "/v1/operator/ledger/invariants", 200, world.operator_token,
                                    timeout_s=INVARIANTS_TIMEOUT_S)
            invariants_ok = bool(report.get("ok"))
            print("  OK" if invariants_ok else f"  BROKEN: {json.dumps(report.get('violations'))[:2000]}")
        else:
            # Over 10^7 payments the checker outlasts a serving process's statement timeout (the endpoint
            # answers 503 database_busy, as it should): a background check, the operator's way for a large
            # ledger, run by the gateway's worker within its own time limit.
            banner(f"ledger invariants (POST /v1/operator/ledger/invariant_checks, waited for up to"
                   f" {INVARIANTS_TIMEOUT_S:g} s)")
            started_s = time.perf_counter()
            check = await api.invariant_check(world.operator_token, INVARIANTS_TIMEOUT_S)
            invariants_ok = check["status"] == "passed"
            print(f"  {check['status']} ({check['invariants_done']} of {check['invariants_total']} invariants,"
                  f" {time.perf_counter() - started_s:.1f} s)"
                  + ("" if invariants_ok else f": {json.dumps(check.get('violations') or check.get('error'))[:2000]}"))
    gateway.stop()

    counts = await payment_counts(args.database_url)
    # Replays create nothing: the payments the client made are every other phase's confirmations.
    every_phase = [warm, *results.values(), *([profiled] if profiled else [])]
    confirmed_total = sum(r.rec.confirmed for r in every_phase if r is not results.get("replays"))
    confirmed_total += sum(pt["confirmed"] for pt in sweep)
    print("  payments in the database by capture method and status: "
          + ", ".join(f"{m}/{s} {n}" for m, s, n in counts))
    print(f"  succeeded in the database: {sum(n for _, s, n in counts if s == 'succeeded')};"
          f" confirmed by this client (all phases but the replays): {confirmed_total}")
    n_errors, shown = gateway_errors(gateway.log_path)
    print(f"  error-level lines in the gateway log: {n_errors}")
    for line in shown:
        print(f"    {line}")

    tps: float | None = None
    if not args.skip_pgbench:
        banner("pgbench on the same PostgreSQL (gateway stopped)")
        await recreate_database(args.database_url, args.pgbench_database)
        try:
            tps, how = await asyncio.to_thread(run_pgbench, args.database_url, args.pgbench_database, sizes)
        finally:
            await drop_database(args.database_url, args.pgbench_database)
        print(f"  {how}: " + (f"{tps:,.1f} tps" if tps is not None else "no figure"))

    tap_p95: float | None = None
    if sizes.tap_sales:
        banner(f"tap to approval: bench/tap_to_approval.py --sales {sizes.tap_sales} (its own gateway and database)")
        tap_p95, tap_out = await asyncio.to_thread(run_tap_to_approval, sizes.tap_sales)
        print("\n".join(f"  {line}" for line in tap_out.splitlines()))

    a = results["A"]
    half = results.get("half_load")

    def ratio(key: str, base: float | None) -> float | None:
        return results[key].rate_per_s / base if key in results and base else None

    # Issue 13's figures: the median over the rounds of each kind of block against the off blocks around it.
    # Judged at equal machine speed (``figures.against_yardstick``) when every block was CPU-bound: this host's
    # speed moves within a block by more than the goal's margin (the client's CPU per payment, fixed work,
    # moved 0.43-0.61 ms within one run), which the rates alone cannot take out. Else from the rates.
    judged = issue13_cpu if issue13_cpu is not None else issue13
    judged_by = "CPU yardstick" if issue13_cpu is not None else "rates"
    features_x = statistics.median(row[0] for row in judged)
    every_x = statistics.median(row[1] for row in judged)

    goals = [
        ("payments_A_over_pgbench", "payments/s (A) / pgbench tps", ratio("A", tps), "x", ">=",
         GOAL_PGBENCH_RATIO_MIN),
        ("payments_B_over_pgbench", "payments/s (B) / pgbench tps", ratio("B", tps), "x", ">=",
         GOAL_B_PGBENCH_RATIO_MIN),
        ("one_merchant_over_spread", "one merchant / spread (A again)", ratio("one_merchant", reference), "x", ">=",
         GOAL_ONE_MERCHANT_RATIO_MIN),
        ("half_load_p99_ms", "p99 whole payment at half load (of A again)",
         percentile_ms(half.rec.whole_s, 99) if half else None, " ms", "<=", GOAL_HALF_LOAD_P99_MS_MAX),
        ("replays_over_payments", "idempotent replays/s / payments/s (A again)", ratio("replays", reference), "x",
         ">=",
         GOAL_REPLAY_RATIO_MIN),
        ("pay_code_over_pgbench", "pay-code charges/s / pgbench tps", ratio("pay_code", tps), "x", ">=",
         GOAL_PAY_CODE_RATIO_MIN),
        ("big_over_empty", f"A with {sizes.big or 'N (--big N)'} more payments / A just before",
         ratio("A_big", results["A_before_big"].rate_per_s if "A_before_big" in results else peak), "x", ">=",
         GOAL_BIG_RATIO_MIN),
        ("features_over_plain", f"13: campaign + FX + blocked wallet / off ({judged_by})",
         features_x, "x", ">=", GOAL_FEATURES_RATIO_MIN),
        ("features_velocity_over_plain", f"13: those + a rule of every kind / off ({judged_by})",
         every_x, "x", ">=", GOAL_FEATURES_RATIO_MIN),
        ("gateway_rss_mb_max", "gateway RSS per process under load (largest)", load_rss_mb, " MB",
         "<=", GOAL_RSS_MB_MAX),
        ("tap_to_approval_p95_ms", "tap-to-approval p95 (register req->answer)", tap_p95, " ms", "<=",
         GOAL_TAP_P95_MS_MAX),
    ]
    banner("summary" + ("  (QUICK MODE: sizes too small for the figures to mean anything)" if args.quick else ""))
    def row(label: str, text: str) -> None:
        print(f"  {label:<55}: {text}")

    for key, label in (("A", "A automatic capture, spread"), ("B", "B manual capture, spread"),
                       ("one_merchant", "A one merchant"), ("replays", "idempotent replays of A's pay calls"),
                       ("pay_code", "pay-code charges (one call)"),
                       ("A_before_big", "A again, just before the generation"),
                       ("A_big", f"A with {sizes.big:,} more payments"),
                       ("A_again", "A again, after the feature phases")):
        if key in results:
            row(f"confirmed per s, {label}", f"{results[key].rate_per_s:10,.1f}")
    row("pgbench tpcb-like tps", f"{tps:10,.1f}" if tps is not None else "       n/a")
    row("A p50 / p99 whole payment at full load",
        f"{fmt_ms(percentile_ms(a.rec.whole_s, 50))} / {fmt_ms(percentile_ms(a.rec.whole_s, 99))} ms")
    if half:
        row("half load p99 per call",
            ", ".join(f"{s} {fmt_ms(percentile_ms(v, 99)).strip()} ms" for s, v in half.rec.call_s.items()))
    if big_s is not None:
        row(f"generating {sizes.big:,} payments in SQL took", f"{big_s:.1f} s")
    row("gateway RSS under load (VmRSS at phase ends, largest)",
        f"{load_rss_mb:,.1f} MB" if load_rss_mb is not None else "n/a")
    row("gateway peak RSS (VmHWM, seeding included) per process",
        ", ".join(f"pid {pid} {mb:,.1f} MB" for pid, mb in rss_mb.items()) or "n/a")
    row("latency against offered load (PNG)", plot or "n/a")
    for r, row_x in enumerate(issue13):
        rates = [results[f"f13_{k}_{r}"].rate_per_s for k in ("off", "features", "every")]
        cpu_x = "" if issue13_cpu is None else f"; CPU {issue13_cpu[r][0]:.3f}x, {issue13_cpu[r][1]:.3f}x"
        row(f"issue 13 round {r + 1}: off / features / every rule per s",
            f"{rates[0]:,.1f} / {rates[1]:,.1f} / {rates[2]:,.1f} (rates {row_x[0]:.3f}x, {row_x[1]:.3f}x{cpu_x})")
    row("issue 13, features off after the last round per s",
        f"{results[f'f13_off_{len(issue13)}'].rate_per_s:,.1f}")
    print("  goals (issue 12; the lines 13: are issue 13's, each the median over its rounds of a block against the"
          " off blocks around it):")
    for _, label, value, unit, op, goal in goals:
        print(goal_line(label, value, unit, f"{op} {goal:g}{unit}",
                        None if value is None else (value >= goal if op == ">=" else value <= goal)))
    print(f"  ledger invariants: {'OK' if invariants_ok else 'BROKEN'};"
          f" error-level lines in the gateway log: {n_errors}")
    errors_total = sum((r.rec.errors for r in every_phase), collections.Counter())
    print(f"  client-side errors, all phases incl. warm-up (not the sweep): {dict(errors_total) or 'none'}")
    measured = [r for r in results.values() if r.cpu]
    other = sum(r.cpu["other"] * r.elapsed_s for r in measured) / max(1e-9, sum(r.elapsed_s for r in measured))
    if idle_busy >= QUIET_CORES_MAX or other >= QUIET_CORES_MAX:
        print(f"  WARNING: processes outside this benchmark used {other:.2f} cores on average during the measured"
              f" phases ({idle_busy:.2f} before start): every figure above is understated")

    figures["phases"] = {k: r.figures() for k, r in results.items()}
    figures.update({
        "pgbench_tps": tps, "goals": {key: {"value": value, "goal": f"{op} {goal:g}",
                                            "met": None if value is None else (value >= goal if op == ">=" else value <= goal)}
                                      for key, _, value, _, op, goal in goals},
        "sweep": sweep, "plot": plot, "gateway_peak_rss_mb": rss_mb, "big_payments": sizes.big,
        "big_generation_s": big_s, "tap_to_approval_p95_ms": tap_p95,
        "invariants_ok": invariants_ok, "gateway_error_lines": n_errors,
        "background_cores_before": idle_busy, "background_cores_during": other,
        "payments_in_db": counts, "profile": profile,
        "issue13_rounds": [{"features_x": f, "every_rule_x": e} for f, e in issue13],
        "issue13_rounds_cpu": (None if issue13_cpu is None
                               else [{"features_x": f, "every_rule_x": e} for f, e in issue13_cpu]),
        "issue13_judged_by": judged_by,
    })
    return figures


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the gateway


def main(argv: list[str] | None = None) -> int:
    args, sizes = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    gateway = Gateway(gateway_env(args, sizes, port), port, sizes.processes, log_dir / "gateway.log")
    started = time.perf_counter()
    try:
        figures = asyncio.run(run(args, sizes, gateway, log_dir))
    finally:
        gateway.stop()
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(figures, indent=2, default=str))
    print(f"\n(total {time.perf_counter() - started:.0f} s; logs in {log_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``gateway serve | migrate | create-operator | check | settle | reconcile | demo``."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import multiprocessing
import sys
from pathlib import Path

from aiohttp import web

from gateway import logs, settings as settings_mod
from gateway.app import create_app
from gateway.errors import GatewayError
from gateway.settings import Settings
from gateway.store import db
from wallet_common.config import render


def _serve_one(config: Settings) -> None:
    logs.configure()
    if config.server.event_loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(
        create_app(config), host=config.server.host, port=config.server.port, reuse_port=True,
        access_log=None, print=None, shutdown_timeout=10,
    )


def serve(config: Settings, processes: int) -> None:
    """Serve on one port from ``processes`` processes (SO_REUSEPORT spreads connections)."""
    asyncio.run(db.migrate(config.database.url))
    if processes == 1:
        _serve_one(config)
        return
    children = [multiprocessing.Process(target=_serve_one, args=(config,), daemon=True) for _ in range(processes)]
    for child in children:
        child.start()
    try:
        for child in children:
            child.join()
    except KeyboardInterrupt:
        for child in children:
            child.terminate()


async def _create_operator(config: Settings, email: str, password: str, role: str) -> None:
    from gateway.services import tenants
    from gateway.services.context import Services

    await db.migrate(config.database.url)
    svc = await Services.start(config)
    try:
        op_id = await tenants.create_operator(svc, email, password, role)
    finally:
        await svc.stop()
    print(f"operator {email} created with role {role} (id {op_id})")


async def _check(config: Settings) -> int:
    from gateway.services import operations
    from gateway.services.context import Services

    svc = await Services.start(config)
    try:
        report = await operations.invariant_report(svc)
    finally:
        await svc.stop()
    print("ledger invariants: OK" if report.ok else f"ledger invariants BROKEN: {report.violations}")
    return 0 if report.ok else 1


async def _reconcile(config: Settings, path: str, fmt: str | None) -> int:
    """Import and match a bank statement file, with a progress bar and a summary table."""
    import msgspec
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from gateway.services import reconciliation
    from gateway.services.context import Services

    cap = config.reconciliation.statement_max_bytes
    with open(path, "rb") as handle:  # read at most one byte past the cap: the parser refuses it
        data = handle.read(cap + 1)
    await db.migrate(config.database.url)
    svc = await Services.start(config)
    console = Console()
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as bar:
            tasks: dict[str, object] = {}

            def progress(stage: str, done: int, total: int) -> None:
                task = tasks.get(stage)
                if task is None:
                    task = tasks[stage] = bar.add_task(stage, total=max(total, 1))
                bar.update(task, completed=done, total=max(total, 1))  # type: ignore[arg-type]

            progress("parse", 0, 1)
            reply = await reconciliation.import_statement(svc, None, data, fmt, progress=progress)
    finally:
        await svc.stop()
    summary = msgspec.json.decode(reply.body, type=reconciliation.ImportSummary)
    table = Table(title=f"reconciliation of {path}")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("entries in the file", str(summary.entries))
    table.add_row("entries new", str(summary.entries_new))
    for rule, count in sorted(summary.matched.items()):
        table.add_row(f"matched: {rule}", str(count))
    for kind, count in sorted(summary.exceptions.items()):
        table.add_row(f"exception: {kind}", str(count))
    table.add_row("exceptions newly opened", str(summary.exceptions_opened))
    console.print(table)
    return 0


class _Directory:
    """Writes each file of a run under ``root`` (the first piece truncates, the next ones append)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._started: set[str] = set()

    def write(self, name: str, data: bytes) -> None:
        path = self.root / name
        if name not in self._started:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._started.add(name)
            path.write_bytes(data)
            return
        with path.open("ab") as out:
            out.write(data)


async def _settle(config: Settings, day_text: str, merchant_text: str | None, out: Path | None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from gateway.domain.ids import Kind, decode
    from gateway.services import settlement
    from gateway.services.context import Services

    day = settlement.business_date(day_text)
    merchant_id = None
    if merchant_text is not None:
        merchant_id = decode(Kind.MERCHANT, merchant_text)
        if merchant_id is None:
            print(f"error: no such merchant: {merchant_text}", file=sys.stderr)
            return 2
    console = Console(stderr=True)
    svc = await Services.start(config)
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            closing = progress.add_task("closing batches", total=1)
            run = await settlement.settle(svc, day, merchant_id)
            progress.update(closing, completed=1)
            files_task = progress.add_task("writing files", total=None)

            def advance(phase: str, done: int, total: int) -> None:
                progress.update(files_task, completed=done, total=total)

            root = out or Path(f"settlement-{day.isoformat()}") / run.id
            digests = await settlement.write_run_files(svc, run.id, _Directory(root), advance)
    finally:
        await svc.stop()
    table = Table(title=f"Settlement run {run.id} for {run.business_date}")
    for column in ("currency", "batches", "captured", "refunded", "fee", "net", "payout", "carried"):
        table.add_column(column, justify="right")
    for t in run.totals:
        table.add_row(t.currency, str(t.batch_count), str(t.captured), str(t.refunded), str(t.fee), str(t.net),
                      str(t.payout), str(t.carried))
    Console().print(table)
    print(f"batches closed now: {run.batches_closed_now}; in the run: {run.batch_count}; payouts: {run.payout_count}"
          f" ({run.payouts_without_account} held: no payout account); merchants whose day has not ended:"
          f" {len(run.merchants_not_ended)}")
    print(f"files: {len(digests)} in {root} (manifest.json lists their SHA-256)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="settings file (default: $GATEWAY_CONFIG, else the defaults inside the package)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the HTTP gateway")
    p_serve.add_argument("--port", type=int)
    p_serve.add_argument("--processes", type=int, default=1)
    sub.add_parser("migrate", help="create the database if missing and apply migrations")
    p_op = sub.add_parser("create-operator", help="create an operator (password read from stdin if not a tty)")
    p_op.add_argument("--email", required=True)
    p_op.add_argument("--role", default="admin", choices=["admin", "settlement", "support"])
    sub.add_parser("check", help="run the ledger invariant checker")
    p_rec = sub.add_parser("reconcile", help="import a bank statement (camt.053 or CSV) and match it")
    p_rec.add_argument("file")
    p_rec.add_argument("--format", choices=["camt053", "csv"], help="default: detected from the content")
    p_settle = sub.add_parser("settle", help="close a business day's settlement batches and write the run's files")
    p_settle.add_argument("--date", required=True, help="business date, YYYY-MM-DD")
    p_settle.add_argument("--merchant", help="only this merchant (mer_...)")
    p_settle.add_argument("--out", type=Path, help="directory for the files (default settlement-DATE/RUN)")
    p_config = sub.add_parser("config", help="print the settings in effect (file, then environment), secrets redacted")
    p_config.add_argument("--format", choices=["toml", "json"], default="toml", help="output format (default: toml)")
    p_demo = sub.add_parser("demo", help="run the demo of a checkout day against a fresh database")
    p_demo.add_argument("--no-wait", action="store_true", help="exit when the demo is done instead of serving")
    p_demo.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)

    port = getattr(args, "port", None)
    try:
        config = settings_mod.load(args.config, server={"port": port}) if port else settings_mod.load(args.config)
    except (ValueError, OSError) as exc:  # bad settings are the operator's to fix: one line, no traceback
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    try:
        if args.command == "serve":
            serve(config, args.processes)
        elif args.command == "migrate":
            applied = asyncio.run(db.migrate(config.database.url))
            print(f"migrations applied: {applied or 'none pending'}")
        elif args.command == "create-operator":
            password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
            asyncio.run(_create_operator(config, args.email, password, args.role))
        elif args.command == "check":
            return asyncio.run(_check(config))
        elif args.command == "reconcile":
            return asyncio.run(_reconcile(config, args.file, args.format))
        elif args.command == "settle":
            return asyncio.run(_settle(config, args.date, args.merchant, args.out))
        elif args.command == "config":
            print(render(config, args.format), end="")
        elif args.command == "demo":
            from gateway import demo

            return asyncio.run(demo.main(config, wait=not args.no_wait))
    except GatewayError as exc:
        where = f" (at {exc.param})" if exc.param else ""
        print(f"error: {exc.code}: {exc.message}{where}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

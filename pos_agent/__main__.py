"""``pos-agent``: the POS agent's command line.

- ``pos-agent enrol --config FILE --code ENR-XXXX-XXXX-XXXX``: exchange a one-time enrolment code
  for device credentials (written to the configured file, mode 0600).
- ``pos-agent run --config FILE``: serve the register until SIGTERM/SIGINT; SIGUSR1 cancels the
  sale in progress (a cashier's cancel button can send it). JSON logs on stderr.
- ``pos-agent status --config FILE [--json]``: enrolment, gateway reachability, each configured
  device (present or not; never opened, the running agent owns them), the offline backlog.
- ``pos-agent doctor --config FILE``: before the shop opens (agent stopped), every configured
  device is opened and made to answer; one line per check.

Exit codes: 0 clean stop (status, doctor: every check passed), 1 a status or doctor check failed,
2 configuration or enrolment problem, 3 device refused by the gateway, 4 gateway unreachable
during enrolment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

from pos_agent import health, logs, settings as settings_mod
from pos_agent.agent import Agent, enrol
from pos_agent.errors import ConfigError, DeviceAuthError, GatewayError, GatewayRejected, NotEnrolledError

log = logging.getLogger("pos_agent")


async def _run(settings: settings_mod.Settings) -> None:
    agent = Agent(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.info("cancel requested: %s", agent.cancel_sale()))
    await agent.run(stop)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pos-agent", description="POS agent: the counter's devices on the gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="serve the register")
    p_run.add_argument("--config", required=True)
    p_enrol = sub.add_parser("enrol", help="enrol this agent with a one-time code")
    p_enrol.add_argument("--config", required=True)
    p_enrol.add_argument("--code", required=True)
    p_enrol.add_argument("--name", help="device name shown to the merchant (default: agent.name)")
    p_enrol.add_argument("--force", action="store_true", help="replace existing credentials")
    p_status = sub.add_parser("status", help="enrolment, gateway, devices and offline backlog, one line each")
    p_status.add_argument("--config", required=True)
    p_status.add_argument("--json", action="store_true", help="print one JSON object instead")
    p_doctor = sub.add_parser("doctor", help="make every configured device answer (run with the agent stopped)")
    p_doctor.add_argument("--config", required=True)
    return parser.parse_args(argv)


def _report(checks: list[health.Check]) -> int:
    for check in checks:
        print(check.line())
    return 0 if all(check.ok for check in checks) else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        settings = settings_mod.load(args.config)
    except ConfigError as exc:
        print(f"pos-agent: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.agent.log_level)
    try:
        if args.command == "enrol":
            enrolment = asyncio.run(enrol(settings, args.code, name=args.name, force=args.force))
            print(json.dumps({"enrolled": True, "device": enrolment.credentials.device,
                              "terminal": enrolment.credentials.terminal,
                              "credentials": str(settings.credentials_path)}))
        elif args.command == "status":
            checks, report = asyncio.run(health.status(settings))
            if not args.json:
                return _report(checks)
            print(json.dumps(report, sort_keys=True, ensure_ascii=False))
            return 0 if all(check.ok for check in checks) else 1
        elif args.command == "doctor":
            return _report(asyncio.run(health.doctor(settings)))
        else:
            asyncio.run(_run(settings))
    except (NotEnrolledError, ConfigError, FileExistsError) as exc:
        log.error("%s", exc)
        return 2
    except DeviceAuthError as exc:
        log.error("the gateway refuses this device: %s", exc)
        return 3
    except GatewayRejected as exc:
        log.error("the gateway refused: %s", exc)
        return 2
    except GatewayError as exc:
        log.error("gateway problem: %s", exc)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())

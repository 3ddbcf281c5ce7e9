"""A py-spy profile of one gateway process while phase A runs at half load, summarised by library and function."""

from __future__ import annotations

import asyncio
import collections
import re
import shutil
import sys
from pathlib import Path

from paybench.config import SUBPROCESS_TIMEOUT_S, Sizes
from paybench.figures import PhaseResult, cpu_text
from paybench.load import LOAD_A, Api, World, open_loop
from paybench.system import Gateway

_FRAME_RE = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")


_AREAS = (
    ("asyncpg", "asyncpg"), ("aiohttp", "aiohttp"), ("redis", "redis"), ("logging", "logging"),
    ("json/", "json (stdlib)"), ("jwt", "jwt"), ("msgspec", "msgspec"), ("prometheus_client", "prometheus_client"),
    ("gateway/", "gateway"), ("asyncio", "asyncio"), ("uuid", "uuid"), ("multidict", "aiohttp"), ("yarl", "aiohttp"),
)


def _area(file: str) -> str:
    return next((name for needle, name in _AREAS if needle in file), "other")


_SEND_LEAF = "_SelectorSocketTransport.write (asyncio/selector_events.py)"


def _file(frame: str) -> str:
    found = _FRAME_RE.match(frame)
    return found["file"] if found else ""


def _share(n: int, total: int) -> str:
    return f"{100 * n / total:5.1f}%"


def summarise_profile(path: Path, top: int = 15) -> list[str]:
    """Summarise py-spy raw output: socket sends by caller, then self time of the rest, then inclusive time.

    py-spy counts a thread as active when it is runnable, so a process preempted inside a loopback
    ``send`` (the kernel wakes the receiving process there, which often takes the core) is sampled
    in ``transport.write``. On an oversubscribed machine that is mostly waiting for a core; it is
    shown apart, attributed to the library that sent, and the rest is broken down without it.
    """
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    senders: collections.Counter[str] = collections.Counter()
    total = sends = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not stack or not n_text.isdigit():
            continue
        n = int(n_text)
        frames = [f for f in stack.split(";") if _FRAME_RE.match(f)]
        if not frames:
            continue
        total += n
        for frame in dict.fromkeys(frames):
            inclusive[frame] += n
        if frames[-1] == _SEND_LEAF:
            sends += n
            caller = next((_area(_file(f)) for f in reversed(frames) if _area(_file(f)) != "asyncio"), "asyncio")
            senders[caller] += n
            continue
        own[frames[-1]] += n
        areas[_area(_file(frames[-1]))] += n
    if total == 0:
        return ["  (no samples)"]
    rest = max(1, total - sends)
    out = [f"  {total} samples of a runnable thread; {_share(sends, total)} inside a socket send, by sender:"]
    out += [f"    {_share(n, total)}  {name}" for name, n in senders.most_common()]
    out.append(f"  the other {total - sends} samples, self time by library:")
    out += [f"    {_share(n, rest)}  {name}" for name, n in areas.most_common()]
    out.append(f"  the other samples, top {top} functions by self time:")
    out += [f"    {_share(n, rest)}  {name}" for name, n in own.most_common(top)]
    out.append(f"  top {top} gateway functions by inclusive time (all samples):")
    skip = ("gateway/__main__.py", "gateway/cli.py")
    ours = [(f, n) for f, n in inclusive.most_common() if "gateway/" in f and not any(x in f for x in skip)][:top]
    out += [f"    {_share(n, total)}  {name}" for name, n in ours]
    out.append(f"  top {top} library functions by inclusive time (all samples):")
    libraries = {"asyncpg", "redis", "jwt", "logging", "msgspec", "prometheus_client", "json (stdlib)", "uuid"}
    theirs = [(f, n) for f, n in inclusive.most_common() if _area(_file(f)) in libraries][:top]
    out += [f"    {_share(n, total)}  {name}" for name, n in theirs]
    return out


async def profiled_phase(api: Api, world: World, sizes: Sizes, rate_per_s: float, gateway: Gateway,
                         log_dir: Path) -> tuple[list[str], PhaseResult | None]:
    """Phase A paced at ``rate_per_s`` (half load) while py-spy samples one gateway process.

    Half load, not full: on a saturated machine a runnable process waits for a core and py-spy
    still samples it, so the profile would show waiting where it should show work.
    """
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return ["  py-spy not found (install it with .venv/bin/pip install py-spy)"], None
    out_path = log_dir / "profile.txt"
    pid = gateway.serving_pid()
    seconds = max(1, round(sizes.profile_s))
    proc = await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "500", "--format", "raw",
        "--nolineno", "--nonblocking", "--output", str(out_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        result = await open_loop(api, world, LOAD_A, sizes, rate_per_s, 10**9, float(seconds), gateway)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=seconds + SUBPROCESS_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), timeout=10)
    lines = [
        f"  profiled gateway pid {pid} for {seconds} s while phase A ran paced at {result.rate_per_s:,.1f} payments/s",
        f"  raw stacks: {out_path}",
        f"  cpu (cores busy on average): {cpu_text(result.cpu)}",
    ]
    if proc.returncode != 0 or not out_path.exists():
        return lines + [f"  py-spy failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}"], result
    return lines + summarise_profile(out_path), result

"""``gateway serve``'s processes: a gunicorn master supervising N aiohttp serving processes.

Invariants:
- the master binds the one listening socket (SO_REUSEADDR, never SO_REUSEPORT) before anything
  else, and the serving processes inherit it: a second gateway on a taken port fails at once,
  and only the processes of one ``serve`` share a port;
- SIGTERM or SIGINT drains: every process stops accepting, in-flight requests get
  ``server.shutdown_grace_s``, then pools and background loops close; the master kills whatever
  is left ``CLEANUP_S`` after the grace, and exits 0;
- a serving process that dies without being asked is started again after a backoff (0.5 s,
  doubling with each crash in ``server.crash_window_s``, capped at ``server.restart_backoff_max_s``);
  more than ``server.crash_count_max`` crashes in the window and the master stops everything and
  exits with ``EXIT_CRASHING``;
- serving processes die with the master whatever kills it: the kernel SIGKILLs them when it dies
  (PR_SET_PDEATHSIG; at once, so that a restarted gateway finds the port free), and gunicorn's
  check of the parent pid is a second line;
- every process writes its metrics to the ``PROMETHEUS_MULTIPROC_DIR`` the command line set up
  before prometheus_client was first imported; a dead process's live gauges are dropped.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import logging
import math
import os
import signal
import socket
import sys
import time
from collections import deque
from typing import Any

from aiohttp import web
from aiohttp.worker import GunicornUVLoopWebWorker, GunicornWebWorker
from gunicorn import glogging
from gunicorn import sock as gunicorn_sock
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer

from gateway import metrics
from gateway.app import create_app
from gateway.settings import Settings

log = logging.getLogger("gateway.serve")
# After the grace, the time a process has to close its pools and background loops (each bounded
# by its own timeouts) before the master kills it.
CLEANUP_S = 10.0
# A serving process that stops answering the master's heartbeat for this long is killed (and
# counted as a crash): its event loop is stuck.
HEARTBEAT_TIMEOUT_S = 30
EXIT_CRASHING = 1
RESTART_BACKOFF_BASE_S = 0.5
LISTEN_BACKLOG = 2048
_PR_SET_PDEATHSIG = 1


class CannotListen(Exception):
    pass


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every serving process accepts on; ``CannotListen`` says why not in one line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        raise CannotListen(f"cannot listen on {host}:{port} (server.host): {exc.strerror}") from None
    listener = socket.socket(family, kind, proto)
    # Lets a restarted gateway bind over connections of the previous one still in TIME_WAIT; on
    # Linux it never lets two sockets listen on one port (that would take SO_REUSEPORT).
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
        listener.listen(LISTEN_BACKLOG)
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            raise CannotListen(f"port {host}:{port} is taken (server.port / --port)") from None
        raise CannotListen(f"cannot listen on {host}:{port} (server.host / server.port): {exc.strerror}") from None
    return listener


class _Worker(GunicornWebWorker):
    def run(self) -> None:
        try:
            super().run()
        except Exception:
            # gunicorn halts everything at once when a process fails before it served (exit 3);
            # a failed start is a crash like any other, left to the restart policy.
            log.exception("serving process failed")
            sys.exit(1)


class _UVLoopWorker(_Worker, GunicornUVLoopWebWorker):
    pass


class _Log(glogging.Logger):  # type: ignore[misc]
    """gunicorn's own lines (a killed process, a timeout) go out through the gateway's JSON logging."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            logger.handlers.clear()
            logger.propagate = True


class _Master(Arbiter):  # type: ignore[misc]
    def __init__(self, app: _Gateway) -> None:
        super().__init__(app)
        self.server = app.config.server
        self.crashes_s: deque[float] = deque()
        self.asked_to_stop: set[int] = set()
        self.respawn_at_s = 0.0
        self.started_s = time.monotonic()

    def handle_int(self) -> None:
        raise StopIteration  # Ctrl-C drains like SIGTERM (gunicorn's own SIGINT is a quick exit)

    def kill_worker(self, pid: int, sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
            self.asked_to_stop.add(pid)
        super().kill_worker(pid, sig)

    def manage_workers(self) -> None:
        if time.monotonic() >= self.respawn_at_s:  # the main loop comes back at least once a second
            super().manage_workers()

    def exited(self, pid: int) -> None:
        metrics.process_exited(pid)
        if pid in self.asked_to_stop:
            self.asked_to_stop.discard(pid)
            return
        now_s = time.monotonic()
        self.crashes_s.append(now_s)
        while self.crashes_s[0] < now_s - self.server.crash_window_s:
            self.crashes_s.popleft()
        crashes = len(self.crashes_s)
        if crashes > self.server.crash_count_max:
            log.error("serving processes keep dying; stopping", extra={
                "worker_pid": pid, "crashes": crashes, "window_s": self.server.crash_window_s})
            raise HaltServer(f"{crashes} crashes in {self.server.crash_window_s:g} s", EXIT_CRASHING)
        delay_s = min(self.server.restart_backoff_max_s, RESTART_BACKOFF_BASE_S * 2 ** (crashes - 1))
        self.respawn_at_s = now_s + delay_s
        log.warning("serving process died; starting another", extra={
            "worker_pid": pid, "restart_in_s": delay_s, "crashes": crashes, "window_s": self.server.crash_window_s})


def _post_fork(master: _Master, worker: _Worker) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != master.pid:  # the master died between the fork and the prctl
        os._exit(1)


def _child_exit(master: _Master, worker: _Worker) -> None:
    master.exited(worker.pid)


def _on_exit(master: _Master) -> None:
    log.info("gateway stopped", extra={"uptime_s": round(time.monotonic() - master.started_s, 3)})


# Python's cyclic collector, tuned for a server whose requests free almost everything they allocate by
# reference counting: what start-up made (modules, caches, the app) is frozen out of every collection, and
# the youngest generation is collected every GC_YOUNG_THRESHOLD allocations instead of 700. A collection costs
# in proportion to the objects still alive in the generations it visits, not to what was freed, so this cuts
# the collector's CPU (perf, bench/payments.py 2026-12-03: 22 us per payment in phase A, 81 us with a risk
# rule of every kind) without keeping more than a few thousand requests' worth of cyclic garbage.
GC_YOUNG_THRESHOLD = 20_000


async def _settle_gc(app: web.Application) -> None:
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


class _Gateway(BaseApplication):  # type: ignore[misc]
    def __init__(self, config: Settings, processes: int, listener: socket.socket) -> None:
        self.config = config
        self.processes = processes
        self.listener = listener
        super().__init__()

    def load_config(self) -> None:
        server = self.config.server
        for name, value in {
            "bind": [f"{server.host}:{server.port}"],  # shown by gunicorn; the socket is bound already
            "workers": self.processes,
            "worker_class": _UVLoopWorker if server.event_loop == "uvloop" else _Worker,
            "graceful_timeout": math.ceil(server.shutdown_grace_s + CLEANUP_S),  # gunicorn takes whole seconds
            "timeout": HEARTBEAT_TIMEOUT_S,
            "logger_class": _Log,
            "loglevel": "warning",  # its start-up chatter says less than the gateway's own line
            "control_socket_disable": True,
            "post_fork": _post_fork,
            "child_exit": _child_exit,
            "on_exit": _on_exit,
        }.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        config = self.config

        async def runner() -> web.AppRunner:  # called in each serving process
            app = create_app(config)
            app.on_startup.append(_settle_gc)  # after the services' start-up (cleanup_ctx runs first)
            return web.AppRunner(app, access_log=None, shutdown_timeout=config.server.shutdown_grace_s)

        return runner

    def run(self) -> None:
        master = _Master(self)
        kind = gunicorn_sock.TCP6Socket if self.listener.family == socket.AF_INET6 else gunicorn_sock.TCPSocket
        master.LISTENERS = [kind(self.listener.getsockname()[:2], self.cfg, master.log, fd=self.listener.detach())]
        master.run()


def run(config: Settings, processes: int, listener: socket.socket) -> None:
    """Serve until stopped; leaves by ``SystemExit`` with the master's exit status."""
    _Gateway(config, processes, listener).run()
